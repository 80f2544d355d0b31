"""The vision backbone seam: a pixel batch in, the features SAM3's heads read out.

SAM3's ViT backbone (+ FPN neck) is by far the most expensive part of a frame, and the only
part the accelerated backends replace. Everything else (text encoder, detector heads, tracker)
stays in torch and reads the backbone's output through this one interface:

    pixel_values (B, 3, S, S) on the model's device and dtype
        -> Sam3VisionEncoderOutput with
           last_hidden_state     (B, S/14 * S/14, C)
           fpn_hidden_states     tuple of (B, D, H_l, W_l), one per FPN level
           fpn_position_encoding tuple of (B, D, H_l, W_l), one per FPN level

Implementations are stateless (they may hold compiled graphs or runtime sessions) and are
only called on the process's compute thread. Nothing outside an implementation calls
`get_vision_features` or the vision encoder: `VisionFeatureCache` (one pass per frame, shared
by every consumer of the frame) and the runtime's batched passes go through here.

Adding a backend: one module with a class satisfying `VisionBackbone`, one entry in
`_FACTORIES`, and its name in the `backend` parameter's choices.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sam3_ros.core.errors import ModelLoadError


class VisionBackbone(Protocol):
    """What the heads need from a vision backbone (see the module docstring for shapes)."""

    name: str
    """Backend name as the `backend` parameter spells it, e.g. "torch"."""

    def __call__(self, pixel_values: Any) -> Any:
        """Features of a (B, 3, S, S) pixel batch: a `Sam3VisionEncoderOutput` with batch B."""
        ...

    def describe(self) -> str:
        """One line for logs and diagnostics (backend, provider, precision, artifact)."""
        ...


class TorchBackbone:
    """The checkpoint's own PyTorch vision encoder (eager, or as loaded: dtype, torchao).

    Args:
        detector: A `Sam3Model` (or `Sam3VideoModel.detector_model`).
    """

    name = "torch"

    def __init__(self, detector: Any) -> None:
        self._detector = detector

    def __call__(self, pixel_values: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self._detector.get_vision_features(pixel_values=pixel_values)

    def describe(self) -> str:
        param = next(self._detector.parameters(), None)
        if param is None:
            return "torch"
        return f"torch ({param.device}, {str(param.dtype).replace('torch.', '')})"


class ReleasedVisionTransformer:
    """Stands in for a checkpoint's torch ViT once another backend computes the features.

    Any call is a bug (something bypassed the `VisionBackbone` seam), so it raises instead
    of silently running a model that is no longer there.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"the torch vision transformer was released: backend "
                           f"'{self.backend}' computes the vision features")


def release_torch_vit(detector: Any, backend: str) -> int:
    """Free the torch ViT weights of a detector whose features `backend` computes.

    With `backend: onnxruntime` the ViT (~440 M of the full-size model's ~850 M parameters;
    1.8 GB in fp32, on the GPU too) would otherwise stay loaded unused next to the runtime's
    own copy. The FPN neck stays: the heads read its position encodings.

    Args:
        detector: A `Sam3Model` (or `Sam3VideoModel.detector_model`) used by one backend only.
        backend: The backend that replaces it (named in the error of a stray call).

    Returns:
        Bytes of parameters and buffers released.
    """
    import torch

    encoder = detector.vision_encoder
    vit = encoder.backbone
    if isinstance(vit, ReleasedVisionTransformer):
        return 0
    released = sum(t.numel() * t.element_size()
                   for t in (*vit.parameters(), *vit.buffers()))
    # Removed from the module tree (state_dict, .to(), parameters()); the stand-in is not a
    # Module, so it is a plain attribute and the ViT's weights go with the last reference.
    delattr(encoder, "backbone")
    encoder.backbone = ReleasedVisionTransformer(backend)
    del vit
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return released


def select_frame(features: Any, index: int) -> Any:
    """Frame `index` of a batched backbone output, as a batch of one (views, no copies).

    Args:
        features: A `Sam3VisionEncoderOutput` with batch B.
        index: 0 <= index < B.
    """
    if features.last_hidden_state.shape[0] == 1 and index == 0:
        return features
    one = slice(index, index + 1)
    return type(features)(
        last_hidden_state=features.last_hidden_state[one],
        fpn_hidden_states=tuple(t[one] for t in features.fpn_hidden_states),
        fpn_position_encoding=tuple(t[one] for t in features.fpn_position_encoding),
    )


# name -> "module:factory"; a factory takes (loaded: LoadedSam3, options: Mapping) and returns
# a VisionBackbone or raises ModelLoadError with the reason it cannot run here. Imported on
# use, so a backend's libraries (onnxruntime, ...) are only needed when it is chosen.
_FACTORIES: dict[str, str] = {
    "torch": "sam3_ros.core.backbone:_torch_factory",
    "onnxruntime": "sam3_ros.core.onnx_backbone:_onnxruntime_factory",
}

BACKENDS = tuple(_FACTORIES)
"""Values of the `backend` parameter."""

BACKEND_OPTION_PARAMS: dict[str, tuple[str, ...]] = {
    "torch": (),
    "onnxruntime": ("onnx_artifact_dir", "onnx_precision", "onnx_provider", "onnx_threads",
                    "onnx_trt_cache_dir", "onnx_trt_fp16", "onnx_trt_int8"),
}
"""Per backend, the ROS parameters that are its options (named without the `onnx_` prefix)."""


def backend_options(backend: str, param: Callable[[str], Any]) -> tuple[tuple[str, Any], ...]:
    """A backend's options from the node's parameters, as `ModelKey.backend_options` wants.

    Args:
        backend: The `backend` parameter.
        param: Reads one parameter by name.

    Returns:
        Sorted (option name, value) pairs; empty for backends without options (torch).
    """
    names = BACKEND_OPTION_PARAMS.get(backend, ())
    return tuple(sorted((name.split("_", 1)[1], param(name)) for name in names))


def _torch_factory(loaded: Any, options: Mapping[str, Any]) -> VisionBackbone:
    if options:
        raise ModelLoadError(f"backend 'torch' takes no backend options, got {sorted(options)}")
    return TorchBackbone(loaded.detector)


def create_backbone(backend: str, loaded: Any,
                    options: Mapping[str, Any] | None = None) -> VisionBackbone:
    """The vision backbone `backend` for a loaded checkpoint.

    Args:
        backend: One of `BACKENDS`.
        loaded: The `LoadedSam3` whose heads will read the features.
        options: Backend-specific settings (provider, artifact folder, ...).

    Raises:
        ModelLoadError: unknown backend, or the backend cannot run here (with the reason).
            There is no fallback to another backend.
    """
    target = _FACTORIES.get(backend)
    if target is None:
        raise ModelLoadError(f"unknown backend '{backend}' (supported: {', '.join(BACKENDS)})")
    module_name, _, attr = target.partition(":")
    factory: Callable[[Any, Mapping[str, Any]], VisionBackbone] = getattr(
        importlib.import_module(module_name), attr)
    return factory(loaded, dict(options or {}))

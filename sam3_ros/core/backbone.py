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

A backbone may also have `prepare(batch_sizes, log)`: everything slow that a first call of
a batch size would do (compiling: `torch_compile`), done during the lifecycle configure
(`prepare_backbone`), so that the first streamed frame is not slow.

Adding a backend: one module with a class satisfying `VisionBackbone`, one entry in
`_FACTORIES`, and its name in the `backend` parameter's choices.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from sam3_ros.core.errors import ConfigError, ModelLoadError

_log = logging.getLogger(__name__)

TORCH_COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
"""Values of the `torch_compile` parameter: none = eager, else a `torch.compile` mode."""

_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""torch.compile modes that replay CUDA graphs on a CUDA device (outputs live in the graph's
memory pool and are overwritten by the next replay)."""


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
    """The checkpoint's own PyTorch vision encoder (eager or `torch.compile`d; dtype and torchao
    quantisation as loaded).

    With `compile_mode` other than "none" the vision encoder (ViT + FPN neck) is wrapped in
    `torch.compile(..., fullgraph=True)`: one graph or an error, never a partly eager backbone.
    Compilation is lazy in torch; `prepare` runs it for the batch sizes the runtime will use,
    during configure. A compile error there raises `ModelLoadError` with the reason (there is
    no fallback to eager). The detector heads are not part of it: `compile_heads`
    (`heads_compile`) compiles the two that compile as one graph each, for any backend.

    Batch sizes: the runtime batches 1..max_batch cameras. Batch 1 is always its own graph
    (torch specialises sizes 0 and 1); calls with B >= 2 mark the batch dimension dynamic, so
    one more graph, compiled at B = 2, serves every B >= 2 without recompiling. `prepare` still
    runs every batch size that can occur, so that anything torch specialises anyway is compiled
    during configure rather than on a streamed frame, and the log shows each one's time. Two
    graphs per model stay below torch's recompile limit, past which it would silently run
    eager (see `prepare`). Static shapes per batch size (kernels specialised to each B >= 2)
    would compile max_batch times instead of twice (minutes each for the full model).

    Args:
        detector: A `Sam3Model` (or `Sam3VideoModel.detector_model`).
        compile_mode: One of `TORCH_COMPILE_MODES`.
        image_size: Side S of the (B, 3, S, S) pixel batch; needed by `prepare` when compiled.
    """

    name = "torch"

    def __init__(self, detector: Any, compile_mode: str = "none",
                 image_size: int | None = None) -> None:
        if compile_mode not in TORCH_COMPILE_MODES:
            raise ConfigError(f"torch_compile must be one of {list(TORCH_COMPILE_MODES)}, got "
                              f"{compile_mode!r}")
        self._detector = detector
        self.compile_mode = compile_mode
        self._image_size = image_size
        self._compiled: Any = None
        self.prepared_batch_sizes: set[int] = set()
        """Batch sizes compiled (and run once) so far."""
        if compile_mode == "none":
            # Eager: transformers would cache the position encodings once per batch size.
            # (Compiled graphs compute them inside the graph, uncached.)
            from sam3_ros.core import position_encoding

            neck = getattr(getattr(detector, "vision_encoder", None), "neck", None)
            if neck is not None and not position_encoding.install(neck):
                _log.warning("this transformers version's SAM3 neck has no position module to "
                             "share between batch sizes; batched passes keep one copy per "
                             "frame of the FPN position encodings")
        else:
            import torch

            self._compiled = torch.compile(
                detector.vision_encoder, fullgraph=True,
                mode=None if compile_mode == "default" else compile_mode)

    def __call__(self, pixel_values: Any) -> Any:
        import torch

        with torch.inference_mode():
            if self._compiled is None:
                return self._detector.get_vision_features(pixel_values=pixel_values)
            batch = int(pixel_values.shape[0])
            if batch not in self.prepared_batch_sizes:
                _log.warning("torch_compile: batch size %d was not compiled during configure; "
                             "compiling it now (this call is slow)", batch)
                self.prepared_batch_sizes.add(batch)
            return self._run_compiled(pixel_values)

    def _run_compiled(self, pixel_values: Any) -> Any:
        import torch

        pixel_values = ordinary_tensor(pixel_values)
        if pixel_values.shape[0] >= 2:
            torch._dynamo.maybe_mark_dynamic(pixel_values, 0)
        cuda_graphs = (self.compile_mode in _CUDA_GRAPH_MODES
                       and pixel_values.device.type == "cuda")
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._compiled(pixel_values)
        if cuda_graphs:
            # The next replay overwrites a CUDA graph's outputs in place, but the feature cache
            # keeps several frames' features: they get their own memory.
            out = type(out)(**{k: _clone(v) for k, v in out.items()})
        return out

    def prepare(self, batch_sizes: Iterable[int],
                log: Callable[[str], None] | None = None) -> None:
        """Compile (and run once) the vision encoder for each batch size not compiled yet.

        Nothing to do when eager. Logs a line before, one per batch size and one after, with
        the time taken.

        Raises:
            ModelLoadError: compilation failed (no C++ compiler, an unsupported op or tensor
                subclass, ...), with torch's reason.
        """
        if self._compiled is None:
            return
        import torch

        log = log or _log.info
        todo = sorted(set(batch_sizes) - self.prepared_batch_sizes)
        if not todo:
            log(f"torch_compile '{self.compile_mode}': vision backbone already compiled for "
                f"batch sizes {sorted(self.prepared_batch_sizes)}")
            return
        if self._image_size is None:
            raise ModelLoadError("torch_compile: the image size is unknown (TorchBackbone "
                                 "built without image_size)")
        param = next(self._detector.parameters())
        log(f"torch_compile '{self.compile_mode}': compiling the vision backbone for batch "
            f"sizes {todo} on {param.device} (can take minutes)")
        started = time.monotonic()
        for batch in todo:
            pixels = torch.zeros(batch, 3, self._image_size, self._image_size,
                                 device=param.device, dtype=param.dtype)
            batch_started = time.monotonic()
            try:
                with strict_compile_config(), torch.inference_mode():
                    self._run_compiled(pixels)
                    if param.device.type == "cuda":
                        torch.cuda.synchronize(param.device)
            except Exception as err:
                raise ModelLoadError(
                    f"torch_compile '{self.compile_mode}': compiling the vision backbone for "
                    f"batch size {batch} failed: {_short_reason(err)}") from err
            self.prepared_batch_sizes.add(batch)
            log(f"torch_compile: batch size {batch} ready in "
                f"{time.monotonic() - batch_started:.1f} s")
        log(f"torch_compile '{self.compile_mode}': vision backbone compiled in "
            f"{time.monotonic() - started:.1f} s")

    def describe(self) -> str:
        param = next(self._detector.parameters(), None)
        if param is None:
            return "torch"
        compiled = "" if self._compiled is None else f", compiled {self.compile_mode}"
        return f"torch ({param.device}, {str(param.dtype).replace('torch.', '')}{compiled})"


def strict_compile_config() -> Any:
    """A context in which `torch.compile` either compiles or raises: never eager in disguise.

    suppress_errors would run a failed compile eagerly, and past the recompile limit torch runs
    eagerly too. The limit counts graphs per code object, i.e. of every model compiled in this
    process (2 each), so it is raised while compiling, and hitting it is an error where this
    torch can make it one.
    """
    import torch

    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    strict: dict[str, Any] = {"suppress_errors": False, limit: max(64, getattr(config, limit))}
    if hasattr(config, "fail_on_recompile_limit_hit"):
        strict["fail_on_recompile_limit_hit"] = True
    return config.patch(**strict)


def ordinary_tensor(tensor: Any) -> Any:
    """`tensor` itself, or an ordinary copy of it when it was made under `inference_mode`.

    Compiled graphs guard on their input's dispatch keys, and an inference tensor's differ
    from an ordinary one's: prepared with ordinary tensors (as the package's preprocessing
    makes), a graph fed an inference tensor recompiled (minutes at full size, on a streamed
    frame). The package's own frames are ordinary, so they are never copied.
    """
    import torch

    if not tensor.is_inference():
        return tensor
    with torch.inference_mode(False):
        return tensor.clone()


def _clone(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    return value.clone() if hasattr(value, "clone") else value


def _short_reason(err: BaseException, limit: int = 1500) -> str:
    """`Type: message` of an error, cut to `limit` characters (torch's compile errors carry
    pages of generated code and stack)."""
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def prepare_backbone(backbone: Any, batch_sizes: Iterable[int],
                     log: Callable[[str], None] | None = None) -> None:
    """Run a backbone's `prepare` (compilation for these batch sizes), if it has one."""
    prepare = getattr(backbone, "prepare", None)
    if prepare is not None:
        prepare(batch_sizes, log)


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

    With `backend: onnxruntime` the ViT (~440 M parameters, 1.8 GB in fp32 at full size)
    would otherwise stay loaded unused next to the runtime's own copy. That costs memory where
    the weights were copied (a GPU, a dtype conversion); fp32 weights memory-mapped from
    safetensors on the CPU are never paged in when unused. The FPN neck stays: the heads read
    its position encodings.

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


def split_frames(features: Any, position: tuple[Any, ...] | None = None) -> list[Any]:
    """The B frames of a batched backbone output, each a batch of one.

    For B > 1 each frame's hidden states are copied out of the batch: views would keep the
    whole batch alive while any one frame is held, and the frames of one batch are released at
    different times (each camera's when its next frame is encoded, maybe in another batch).
    Position encodings depend on the feature shape only (sine encodings of the grid), so every
    frame shares one batch-of-one tensor: a view when the batch's encodings are already one
    frame expanded (`position_encoding`), else a copy of frame 0's.

    Args:
        features: A `Sam3VisionEncoderOutput` with batch B.
        position: Shared position encodings from an earlier batch, each (1, D, H_l, W_l);
            used when they match this output's shapes, dtype and device, else frame 0's are
            copied.

    Returns:
        B outputs with batch 1 (for B == 1, `features` itself: no copy).
    """
    import torch

    batch = features.last_hidden_state.shape[0]
    if batch == 1:
        return [features]
    # The copies are inference tensors when the batch's are (as a batch-of-one pass gives
    # them), ordinary ones otherwise: compiled heads (`compile_heads`) guard on that, and
    # would compile again for a frame of a batched pass.
    with torch.inference_mode(features.last_hidden_state.is_inference()):
        current = features.fpn_position_encoding
        if position is None or len(position) != len(current) or any(
                p.shape[1:] != t.shape[1:] or p.dtype != t.dtype or p.device != t.device
                or p.is_inference() != t.is_inference()
                for p, t in zip(position, current, strict=False)):
            position = tuple(_one_frame_view(t) if t.stride(0) == 0 else t[:1].clone()
                             for t in current)
        return [type(features)(
            last_hidden_state=features.last_hidden_state[i:i + 1].clone(),
            fpn_hidden_states=tuple(t[i:i + 1].clone() for t in features.fpn_hidden_states),
            fpn_position_encoding=position,
        ) for i in range(batch)]


def _one_frame_view(expanded: Any) -> Any:
    """Frame 0 of a batch expanded from one frame (batch stride 0), as a (1, ...) view with
    the strides a batch-of-one pass gives it (batch stride = one frame's elements): compiled
    heads (`compile_heads`) guard on strides, a size-1 dimension's included."""
    shape = (1, *expanded.shape[1:])
    return expanded.as_strided(shape, (expanded[0].numel(), *expanded.stride()[1:]),
                               expanded.storage_offset())


# name -> "module:factory"; a factory takes (loaded: LoadedSam3, options: Mapping) and returns
# a VisionBackbone or raises ModelLoadError with the reason it cannot run here. Imported on
# use, so a backend's libraries (onnxruntime, ...) are only needed when it is chosen.
_FACTORIES: dict[str, str] = {
    "torch": "sam3_ros.core.backbone:_torch_factory",
    "onnxruntime": "sam3_ros.core.onnx_backbone:_onnxruntime_factory",
    "torch_int8": "sam3_ros.core.torch_int8_backbone:_torch_int8_factory",
}

BACKENDS = tuple(_FACTORIES)
"""Values of the `backend` parameter."""

BACKEND_OPTION_PARAMS: dict[str, tuple[str, ...]] = {
    "torch": ("torch_compile",),
    "onnxruntime": ("onnx_artifact_dir", "onnx_precision", "onnx_provider", "onnx_threads",
                    "onnx_trt_cache_dir", "onnx_trt_fp16", "onnx_trt_int8"),
    "torch_int8": ("torch_int8_calibration", "torch_int8_calibration_frames"),
}
"""Per backend, the ROS parameters that are its options (named without the `onnx_`/`torch_`
prefix). They are part of the model key: nodes that differ in one load separate models."""

EXCLUSIVE_OPTION_OFF: dict[str, Any] = {"torch_compile": "none", "torch_int8_calibration": ""}
"""Options that mean nothing to any other backend, with their "off" value: set to anything
else while another backend is chosen, they are refused (not silently ignored)."""

PATH_OPTION_PARAMS = frozenset({"onnx_artifact_dir", "onnx_trt_cache_dir",
                                "torch_int8_calibration"})
"""Options that name a folder: resolved in the model key (`~` expanded, symbolic links
followed, `a/./b/` = `a/b`), so nodes that spell one folder two ways share one model; the
backend gets the resolved path, which names the same folder."""


def backend_options(backend: str, param: Callable[[str], Any]) -> tuple[tuple[str, Any], ...]:
    """A backend's options from the node's parameters, as `ModelKey.backend_options` wants.

    Args:
        backend: The `backend` parameter.
        param: Reads one parameter by name.

    Returns:
        Sorted (option name, value) pairs.

    Raises:
        ConfigError: an option of another backend in `EXCLUSIVE_OPTION_OFF` is not off
            (e.g. torch_compile with backend onnxruntime).
    """
    names = BACKEND_OPTION_PARAMS.get(backend, ())
    for owner, owned in BACKEND_OPTION_PARAMS.items():
        for name in owned:
            if owner == backend or name not in EXCLUSIVE_OPTION_OFF:
                continue
            value, off = param(name), EXCLUSIVE_OPTION_OFF[name]
            if value != off:
                raise ConfigError(f"{name} '{value}' applies to backend '{owner}' only; with "
                                  f"backend '{backend}' set {name} to '{off}'")
    options = {}
    for name in names:
        value = param(name)
        if name in PATH_OPTION_PARAMS and value:
            value = os.path.realpath(os.path.expanduser(str(value)))
        options[name.split("_", 1)[1]] = value
    key_options = _KEY_OPTIONS.get(backend)
    if key_options is not None:
        options = key_options(options)
    return tuple(sorted(options.items()))


def _torch_int8_key_options(options: dict[str, Any]) -> dict[str, Any]:
    """The frame count means nothing without a calibration folder: two dynamic nodes that
    differ only in it share one model."""
    if not options.get("int8_calibration"):
        return {"int8_calibration": ""}
    return options


_KEY_OPTIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "torch_int8": _torch_int8_key_options,
}
"""Per backend, options that are equivalent for its model, mapped to one form (one model key
per distinct model)."""


def _torch_factory(loaded: Any, options: Mapping[str, Any]) -> VisionBackbone:
    unknown = sorted(set(options) - {"compile"})
    if unknown:
        raise ModelLoadError(f"backend 'torch': unknown options {unknown} (known: ['compile'])")
    return TorchBackbone(loaded.detector, compile_mode=str(options.get("compile", "none")),
                         image_size=int(loaded.processor.image_processor.size["height"]))


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

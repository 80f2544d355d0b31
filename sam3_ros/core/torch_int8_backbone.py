"""Backend `torch_int8`: the vision transformer in INT8 on an x86 CPU, through PyTorch.

The ViT's linear layers are quantised with torchao's PT2E flow and X86InductorQuantizer
(weights int8 per output channel; activations int8 per tensor, their ranges either computed
at run time on every frame (dynamic, the default: no calibration frames) or fixed from
calibration frames (static, option `int8_calibration`: a folder of the user's camera
frames; no per-frame range pass: 4.14 vs 5.08 s at full size)) and the quantised graph is
compiled by inductor with weight freezing, which lowers every quantised linear to oneDNN's
int8 kernel (AMX or VNNI). Everything
that is not a GEMM (layer norms, GELU, rotary embeddings, attention) runs in the model's
`dtype`: with `bfloat16`, under CPU autocast (on AMX the attention is the other big cost, and
bf16 runs it ~3x faster than fp32). The FPN neck, the text encoder and the heads stay in torch
in the model's dtype (the neck's transposed convolutions ran slower quantised than in bf16);
the heads can be compiled with `compile_heads`.

Measured at full size (random weights) on a 2-core Intel Xeon with AMX: the ViT 3.98 s + neck
0.13-0.2 s against 21.5 s for torch fp32 (README, "torch_int8").

Configure does the slow work, once per model: export the ViT (`torch.export`, batch dimension
dynamic), prepare and convert it (one fp32 pass so the weight observers see the weights:
without it the quantised weights are garbage, feature cosine ~0.07 on the tiny model; static:
one fp32 pass per calibration frame, which also records the activation ranges), then
compile it for each batch size the runtime will use (`prepare`, about a minute per graph at
full size on 2 cores). The torch ViT is then released (the quantised graph holds its own
int8 weights).

Refused with the reason (no fallback): a device other than the CPU, a CPU that is not x86,
a torchao `quantization` on top, a torchao without PT2E, a calibration folder that cannot
be read (no images, an image too large or corrupt), and a failed export or compile.

This is the only module that touches torch's export/PT2E graph internals.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sam3_ros.core.backbone import _short_reason, ordinary_tensor, strict_compile_config
from sam3_ros.core.errors import ModelLoadError

_log = logging.getLogger(__name__)

_X86_MACHINES = ("x86_64", "amd64", "i686", "x86")

MAX_EXPORT_BATCH = 64
"""Upper bound of the exported graph's dynamic batch dimension (the runtime's max_batch is
far below it)."""

DEFAULT_CALIBRATION_FRAMES = 4
"""Default of `int8_calibration_frames` (parameter `torch_int8_calibration_frames`, the tools'
flags)."""

MAX_CALIBRATION_FRAMES = 64
"""Upper bound of `int8_calibration_frames` (each is a full fp32 pass of the ViT in configure:
~25 s at full size on a 2-core CPU)."""


def _quantizer(is_dynamic: bool = True) -> Any:
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as err:
        raise ModelLoadError(f"backend 'torch_int8' needs torchao with PT2E quantisation "
                             f"(torchao.quantization.pt2e): {err}") from None
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(
        is_dynamic=is_dynamic))
    return quantizer, prepare_pt2e, convert_pt2e


def quantize_vit(vit: Any, image_size: int, in_place: bool = False,
                 calibration: Sequence[Any] = ()) -> Any:
    """An INT8 fp32-graph copy of a Sam3 ViT, not compiled yet.

    Args:
        vit: `Sam3ViTModel` (any dtype; exported in float32).
        image_size: Side S of the (B, 3, S, S) pixel batch the graph is exported for.
        in_place: Convert a `vit` that is not float32 to float32 in place instead of
            exporting a float32 copy: for a caller that discards `vit` afterwards (the
            backend: the model hub releases it). The copy kept the bf16 and the fp32 ViT
            side by side, 0.9 + 1.8 GB at full size, the configure's memory peak.
        calibration: (1, 3, S, S) pixel tensors (the processor's output for the user's
            frames). Empty: dynamic activation quantisation; otherwise static, with each
            activation's range observed over these frames.

    Returns:
        A `torch.fx.GraphModule`: (B, 3, S, S) float32 pixels -> an output whose
        `last_hidden_state` is (B, S/14 * S/14, C).

    Raises:
        ModelLoadError: torchao PT2E missing, or the export/quantisation failed (the reason).
    """
    import torch

    quantizer, prepare_pt2e, convert_pt2e = _quantizer(is_dynamic=not calibration)
    param = next(vit.parameters())
    dtype = param.dtype  # (param's own dtype changes with an in-place conversion)
    if dtype == torch.float32:
        source = vit
    elif in_place:
        source = vit.float()  # each weight's bf16 storage is freed as it is converted
    else:
        source = copy.deepcopy(vit).float()
    # Batch 2 as the example: torch.export specialises a dimension whose example is 1.
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    try:
        with torch.no_grad():
            exported = torch.export.export(source, (example,), dynamic_shapes=({0: batch},))
            prepared = prepare_pt2e(exported.module(), quantizer)
            # The observers record during forward passes: the weights' on any frame (dynamic
            # activations: one zero frame is enough), the activations' on every calibration
            # frame.
            for pixels in calibration or (example[:1],):
                prepared(pixels.float())
            graph = convert_pt2e(prepared)
    except Exception as err:
        if source is vit and dtype != torch.float32:
            vit.to(dtype)  # converted in place: give the caller back the ViT it had
        raise ModelLoadError(f"backend 'torch_int8': quantising the vision transformer "
                             f"failed: {_short_reason(err)}") from err
    finally:
        # Also after a failure: each failed configure would otherwise keep another copy.
        _clear_module_caches()
    # torch.export records every dtype the fp32 trace saw as a runtime assertion; under
    # bf16 autocast those dtypes change by design, so the assertions go.
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and "_assert_tensor_metadata" in str(node.target):
            graph.graph.erase_node(node)
    graph.recompile()
    _drop_unused_tensors(graph)
    return graph


# Unbounded functools caches keyed by the module they were called with: they kept the
# exported and prepared modules, with the fp32 copy of every ViT weight (1.8 GB at full
# size), alive for the life of the process (torchao 0.18, torch 2.14).
_MODULE_CACHES = ("torchao.utils:_assert_and_get_unique_device",
                  "torch.ao.quantization.fx.utils:assert_and_get_unique_device")


def _clear_module_caches() -> None:
    import importlib

    for target in _MODULE_CACHES:
        module_name, _, attr = target.partition(":")
        try:
            cached = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def _drop_unused_tensors(graph: Any) -> int:
    """Delete the parameters and buffers no node reads; returns the bytes freed.

    convert_pt2e folds each quantised weight into a new int8 constant but leaves the fp32
    original on the module: kept, the graph held the whole fp32 ViT (1.8 GB at full size)
    beside its int8 weights.
    """
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    freed = 0
    for name, tensor in [*graph.named_parameters(), *graph.named_buffers()]:
        if name in used:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = graph.get_submodule(owner_name) if owner_name else graph
        freed += tensor.numel() * tensor.element_size()
        delattr(owner, leaf)
    return freed


class TorchInt8Backbone:
    """The ViT quantised to INT8 and compiled (see the module docstring); the neck eager.

    Args:
        graph: `quantize_vit`'s graph.
        neck: The checkpoint's `Sam3VisionNeck` (eager, in `dtype`).
        patch_size: The ViT's patch size (14).
        image_size: Side S of the pixel batch.
        dtype: The model's dtype: the heads read features in it; bfloat16 also runs the
            graph's non-GEMM ops under CPU autocast.
        calibration_frames: How many frames the activation ranges were calibrated on (0:
            dynamic activations); shown by `describe`.
    """

    name = "torch_int8"

    def __init__(self, graph: Any, neck: Any, patch_size: int, image_size: int,
                 dtype: Any, calibration_frames: int = 0) -> None:
        import torch

        from sam3_ros.core import position_encoding

        self._graph = graph
        self._neck = neck
        self._patch_size = patch_size
        self._image_size = image_size
        self._dtype = dtype
        self._calibration_frames = calibration_frames
        autocast = dtype == torch.bfloat16

        def run(pixel_values: Any) -> Any:
            # The graph was exported in fp32; the cast is part of the compiled graph.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return graph(pixel_values.float())

        self._compiled = torch.compile(run, fullgraph=True)
        self.prepared_batch_sizes: set[int] = set()
        """Batch sizes compiled (and run once) so far."""
        if not position_encoding.install(neck):
            _log.warning("this transformers version's SAM3 neck has no position module to "
                         "share between batch sizes")

    def __call__(self, pixel_values: Any) -> Any:
        import torch
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        batch = int(pixel_values.shape[0])
        with torch.inference_mode():
            if batch in self.prepared_batch_sizes:
                hidden = self._run_graph(pixel_values)
            else:  # cannot happen with the model hub's batch sizes; never eager in disguise
                _log.warning("torch_int8: batch size %d was not compiled during configure; "
                             "compiling it now (this call is slow)", batch)
                with strict_compile_config():
                    hidden = self._run_graph(pixel_values)
                self.prepared_batch_sizes.add(batch)
            hidden = hidden.to(self._dtype)
            # As Sam3VisionModel.forward: tokens -> (B, C, H/14, W/14) for the FPN neck.
            height = pixel_values.shape[-2] // self._patch_size
            width = pixel_values.shape[-1] // self._patch_size
            spatial = hidden.view(batch, height, width, -1).permute(0, 3, 1, 2)
            fpn_hidden_states, fpn_position_encoding = self._neck(spatial)
        return Sam3VisionEncoderOutput(last_hidden_state=hidden,
                                       fpn_hidden_states=fpn_hidden_states,
                                       fpn_position_encoding=fpn_position_encoding)

    def _run_graph(self, pixel_values: Any) -> Any:
        import torch
        from torch._inductor import config as inductor_config

        pixels = ordinary_tensor(pixel_values)
        if pixels.shape[0] >= 2:
            torch._dynamo.maybe_mark_dynamic(pixels, 0)
        # Freezing (constant weights) is what lowers the quantised linears to oneDNN's int8
        # kernels; as a patch, so other compiled models in the process keep their setting.
        with inductor_config.patch(freezing=True):
            return self._compiled(pixels).last_hidden_state

    def prepare(self, batch_sizes: Iterable[int],
                log: Callable[[str], None] | None = None) -> None:
        """Compile (and run once) the quantised ViT for each batch size not compiled yet.

        Raises:
            ModelLoadError: compilation failed (no C++ compiler, ...), with torch's reason.
        """
        import torch

        log = log or _log.info
        todo = sorted(set(batch_sizes) - self.prepared_batch_sizes)
        if not todo:
            log(f"torch_int8: vision transformer already compiled for batch sizes "
                f"{sorted(self.prepared_batch_sizes)}")
            return
        log(f"torch_int8: compiling the INT8 vision transformer for batch sizes {todo} "
            f"(can take minutes)")
        started = time.monotonic()
        for batch in todo:
            # As the package's frames: ordinary tensors in the model's dtype (a graph
            # compiled for another input dtype or kind would compile again on a frame).
            pixels = torch.zeros(batch, 3, self._image_size, self._image_size,
                                 dtype=self._dtype)
            batch_started = time.monotonic()
            try:
                with strict_compile_config(), torch.inference_mode():
                    self._run_graph(pixels)
            except Exception as err:
                raise ModelLoadError(f"torch_int8: compiling the vision transformer for batch "
                                     f"size {batch} failed: {_short_reason(err)}") from err
            self.prepared_batch_sizes.add(batch)
            log(f"torch_int8: batch size {batch} ready in "
                f"{time.monotonic() - batch_started:.1f} s")
        log(f"torch_int8: vision transformer compiled in {time.monotonic() - started:.1f} s")

    def describe(self) -> str:
        compute = "bf16 autocast" if str(self._dtype) == "torch.bfloat16" else "fp32"
        if self._calibration_frames:
            linears = f"int8 static linears calibrated on {self._calibration_frames} frames"
        else:
            linears = "int8 dynamic linears"
        return f"torch_int8 (cpu, {linears}, {compute}, neck eager)"


OPTIONS = ("int8_calibration", "int8_calibration_frames")
"""The backend's options (parameters `torch_int8_calibration`, `torch_int8_calibration_frames`)."""


def calibration_pixels(image_processor: Any, folder: str, count: int) -> list[Any]:
    """The first `count` images of `folder` (by name) as (1, 3, S, S) float32 pixel tensors,
    made by the checkpoint's image processor from the RGB frames.

    Each image is decoded, preprocessed and dropped before the next is read, so at most one
    decoded image is held (the tensors: 12 MB each at 1008 px).

    Args:
        image_processor: The checkpoint's `Sam3ImageProcessor` (S = its size).
        folder: Folder of png/jpeg frames.
        count: How many of them, in [1, MAX_CALIBRATION_FRAMES].

    Returns:
        One (1, 3, S, S) tensor per image read (fewer than `count` when the folder has fewer;
        a warning says so).

    Raises:
        ModelLoadError: `count` out of range, or the folder or an image in it cannot be used.
    """
    from sam3_ros.core.errors import InvalidImageError
    from sam3_ros.core.image_codec import iter_image_folder

    if not 1 <= count <= MAX_CALIBRATION_FRAMES:
        raise ModelLoadError(f"backend 'torch_int8': int8_calibration_frames must be in "
                             f"[1, {MAX_CALIBRATION_FRAMES}], got {count}")
    pixels = []
    try:
        for path, rgb in iter_image_folder(folder, count):
            try:
                # channels_last: a frame 1 or 3 pixels tall would otherwise be read as CHW.
                pixels.append(image_processor(images=rgb, input_data_format="channels_last",
                                        return_tensors="pt")["pixel_values"])
            except Exception as err:
                raise ModelLoadError(f"backend 'torch_int8': calibration frames: {path}: the "
                                     f"processor refused it: {_short_reason(err)}") from None
    except InvalidImageError as err:
        raise ModelLoadError(f"backend 'torch_int8': calibration frames: {err}") from None
    if len(pixels) < count:
        _log.warning("torch_int8: %s has %d image(s), fewer than torch_int8_calibration_frames "
                     "(%d): calibrating on %d", folder, len(pixels), count, len(pixels))
    return pixels


def _torch_int8_factory(loaded: Any, options: Mapping[str, Any]) -> TorchInt8Backbone:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ModelLoadError(f"backend 'torch_int8': unknown options {unknown} "
                             f"(known: {list(OPTIONS)})")
    if loaded.device.type != "cpu":
        raise ModelLoadError(f"backend 'torch_int8' runs on the CPU only (x86 oneDNN int8 "
                             f"kernels); the model is on {loaded.device}. On a GPU use backend "
                             f"onnxruntime with onnx_provider tensorrt and onnx_trt_int8")
    machine = platform.machine().lower()
    if machine not in _X86_MACHINES:
        raise ModelLoadError(f"backend 'torch_int8' needs an x86 CPU (X86InductorQuantizer, "
                             f"oneDNN int8); this machine is {platform.machine()}")
    if getattr(loaded, "quantization", "none") != "none":
        raise ModelLoadError(f"backend 'torch_int8' quantises the vision transformer itself; "
                             f"set quantization to 'none' (got '{loaded.quantization}')")
    folder = str(options.get("int8_calibration", "") or "")
    calibration = []
    if folder:
        count = int(options.get("int8_calibration_frames", DEFAULT_CALIBRATION_FRAMES))
        calibration = calibration_pixels(loaded.processor.image_processor, folder, count)
        _log.info("torch_int8: static activation ranges from %d frame(s) of %s (one fp32 "
                  "pass each)", len(calibration), folder)
    encoder = loaded.detector.vision_encoder
    image_size = int(loaded.processor.image_processor.size["height"])
    started = time.monotonic()
    # The hub releases this ViT once the backend exists (this model serves torch_int8 only;
    # a failed configure releases the whole model), so it is converted, not copied.
    graph = quantize_vit(encoder.backbone, image_size, in_place=True, calibration=calibration)
    _log.info("torch_int8: vision transformer exported and quantised in %.1f s",
              time.monotonic() - started)
    return TorchInt8Backbone(graph, encoder.neck, int(encoder.config.backbone_config.patch_size),
                             image_size, loaded.dtype, calibration_frames=len(calibration))

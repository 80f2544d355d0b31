"""Loading SAM3 checkpoints (hub id or local folder) onto a device and dtype, with clear errors."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_ros.core.errors import ModelLoadError

DTYPES = ("float32", "float16", "bfloat16")
"""Parameter values of `dtype`; torchao quantisation is a separate `quantization` setting."""

QUANTIZATIONS = ("none", "int8_weight_only", "int8_dynamic", "nvfp4")
"""torchao weight quantisation modes (applied to the nn.Linear layers after loading)."""


def resolve_device(device: str) -> Any:
    """Turn a `device` parameter ("cpu", "cuda", "cuda:1", "auto") into a torch.device.

    Raises:
        ModelLoadError: CUDA was asked for but is absent, or the index does not exist.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ModelLoadError(f"invalid device '{device}': {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device '{device}' asked for, but CUDA is not available "
                f"(torch {torch.__version__}, cuda build {torch.version.cuda})"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device '{device}' asked for, but only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ModelLoadError(f"unsupported device '{device}' (use cpu, cuda, cuda:N or auto)")
    return dev


def resolve_dtype(dtype: str, device: Any) -> Any:
    """Map a `dtype` parameter to a torch dtype, refusing combinations that cannot run."""
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unsupported dtype '{dtype}' (supported: {', '.join(DTYPES)})")
    torch_dtype = getattr(torch, dtype)
    if torch_dtype is torch.float16 and device.type == "cpu":
        raise ModelLoadError("dtype float16 is not supported on the CPU; use float32 or bfloat16")
    return torch_dtype


@dataclass
class LoadedSam3:
    """A loaded SAM3 checkpoint.

    Attributes:
        source: The hub id or folder it came from.
        detector: `Sam3Model` (text/box-exemplar detector + masks). When the checkpoint was
            loaded as a video model this is `video_model.detector_model` (same weights).
        processor: `Sam3Processor` (image preprocessing, tokenizer, post-processing).
        video_model: `Sam3VideoModel` (detector + memory tracker) or None when only the image
            model was loaded.
        device / dtype: where the weights live.
        quantization: The torchao mode applied (`QUANTIZATIONS`).
        checkpoint_dir: The local folder the weights were read from (a hub id's snapshot in
            the Hugging Face cache); None when it could not be resolved. Identifies the
            checkpoint's files for the text-embedding cache.
        model_type: The checkpoint's config model_type ("sam3", "sam3_video",
            "sam3_lite_text").
        checkpoint_stamps: `text_cache.checkpoint_stamps` of a local folder taken before its
            files were read (None for a hub id, whose snapshot files never change): the text
            cache is keyed by the files' hash, computed later, so files replaced in between
            would store the old weights' embeddings under the new files' key.
    """

    source: str
    detector: Any
    processor: Any
    video_model: Any
    device: Any
    dtype: Any
    quantization: str = "none"
    checkpoint_dir: Path | None = None
    model_type: str = "sam3"
    checkpoint_stamps: tuple | None = None

    def files_changed(self) -> bool:
        """Whether the checkpoint folder's files changed since they were loaded (False when
        no stamps were taken).

        Raises:
            OSError: the folder can no longer be listed.
        """
        if self.checkpoint_stamps is None or self.checkpoint_dir is None:
            return False
        from sam3_ros.core.text_cache import checkpoint_stamps

        return checkpoint_stamps(self.checkpoint_dir) != self.checkpoint_stamps

    def release(self) -> None:
        """Drop the weights and free cached GPU memory (lifecycle cleanup)."""
        import gc

        import torch

        self.detector = None
        self.video_model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        trim_heap()


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, not Linux)."""
    import ctypes

    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return malloc_trim


def trim_heap() -> bool:
    """Give the C heap's free pages back to the operating system (glibc's `malloc_trim`).

    glibc keeps freed blocks in its arenas for reuse: after configure freed gigabytes (the
    torch ViT another backend replaces, `torch_int8`'s export graphs, a cleaned-up model),
    0.6 GB at full size stayed in the process's resident memory, unused (2.23 -> 1.64 GB when
    trimmed, README). Costs milliseconds; called at configure and cleanup, never per frame.
    Under another allocator (jemalloc or tcmalloc preloaded) it finds glibc's heap nearly
    empty and frees nothing.

    Returns:
        Whether anything could be asked (False on a C library without `malloc_trim`, e.g.
        musl, or outside Linux).
    """
    malloc_trim = _libc_malloc_trim()
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


DETECTOR_MODEL_TYPES = ("sam3", "sam3_video", "sam3_lite_text")
"""Checkpoint model types holding a SAM3 detector: `Sam3Model`, or `Sam3LiteTextModel` (SAM3
with the smaller MobileCLIP-style text encoder of EfficientSAM3 LiteText; image model only)."""
TRACKER_MODEL_TYPES = ("sam3_video",)
"""Checkpoint model types holding detector and memory tracker (`Sam3VideoModel`)."""

_WHAT_IT_IS = {
    "sam3": "a 'sam3' image model (Sam3Model: detector only, no memory tracker)",
    "sam3_video": "a 'sam3_video' model (detector and memory tracker)",
    "sam3_tracker": "a 'sam3_tracker' model (point/box prompts on single images: no memory "
                    "tracker, no text detector)",
    "sam3_tracker_video": "a 'sam3_tracker_video' model (memory tracker only, no text "
                          "detector)",
    "sam3_lite_text": "a 'sam3_lite_text' image model (Sam3LiteTextModel: detector with the "
                      "LiteText text encoder; transformers has no LiteText video model, so "
                      "there is no memory tracker for it)",
}


def _local_folder(source: str) -> Path | None:
    """The checkpoint folder `source` names, None for a hub id; refuses bad folders."""
    local = Path(source).expanduser()
    if not (source.startswith(("/", ".", "~")) or local.exists()):
        return None
    if not local.is_dir():
        raise ModelLoadError(f"checkpoint folder '{source}' does not exist")
    if not (local / "config.json").is_file():
        raise ModelLoadError(f"'{source}' is not a checkpoint folder (no config.json in it)")
    return local


def _unreachable(source: str, what: str, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (" (HF_HUB_OFFLINE=1 is set: only locally cached ids load)" if offline else
            "; a gated id such as facebook/sam3 needs `hf auth login` and accepted terms,"
            " or download it and pass the folder")
    return ModelLoadError(f"cannot load '{source}' with {what}: {err}{hint}")


def checkpoint_config(source: str) -> dict[str, Any]:
    """The checkpoint's config.json (a few kB: read before any weights are built).

    Raises:
        ModelLoadError: missing folder, no config.json, unreadable JSON, unreachable id.
    """
    local = _local_folder(source)
    if local is not None:
        try:
            config = json.loads((local / "config.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ModelLoadError(f"cannot read {local / 'config.json'}: {err}") from None
    else:
        from transformers import PretrainedConfig

        try:
            config, _ = PretrainedConfig.get_config_dict(source)
        except OSError as err:
            raise _unreachable(source, "its config.json", err) from None
        except ValueError as err:
            raise ModelLoadError(f"cannot read the config of '{source}': {err}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"the config.json of '{source}' is not a JSON object")
    return config


def check_checkpoint_kind(config: dict[str, Any], source: str, with_tracker: bool) -> None:
    """Refuse a checkpoint that lacks the model asked for, saying what it is and what is needed.

    Args:
        config: The checkpoint's config.json (`checkpoint_config`).
        source: Hub id or folder, for the message.
        with_tracker: The memory tracker is needed (else the detector only).

    Raises:
        ModelLoadError: the checkpoint's model_type holds no such model.
    """
    model_type = config.get("model_type")
    wanted = TRACKER_MODEL_TYPES if with_tracker else DETECTOR_MODEL_TYPES
    if model_type in wanted:
        return
    architectures = config.get("architectures") or []
    listed = f", architectures {architectures}" if architectures else ""
    what = _WHAT_IT_IS.get(model_type,
                           f"not a SAM3 checkpoint (model_type {model_type!r}{listed})")
    if with_tracker:
        needed = ("the tracker needs a SAM3 video checkpoint (model_type 'sam3_video', "
                  "architectures ['Sam3VideoModel'], e.g. facebook/sam3), which holds the "
                  "detector and the memory tracker")
    else:
        needed = ("the detector needs a SAM3 checkpoint with model_type 'sam3', 'sam3_video' "
                  "(e.g. facebook/sam3) or 'sam3_lite_text'")
    raise ModelLoadError(f"checkpoint '{source}' is {what}; {needed}")


def _from_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    local = _local_folder(source)
    try:
        return cls.from_pretrained(str(local) if local is not None else source, **kwargs)
    except OSError as err:
        raise _unreachable(source, cls.__name__, err) from None
    except (ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"'{source}' is not a loadable SAM3 checkpoint for "
                             f"{cls.__name__}: {err}") from None


def apply_quantization(model: Any, mode: str, device: Any) -> None:
    """Quantise `model`'s linear layers in place with torchao.

    Args:
        model: The module to quantise (the detector, or the whole video model).
        mode: One of `QUANTIZATIONS`.
        device: The model's torch.device (NVFP4 needs a CUDA GPU of compute capability >= 10.0).

    Raises:
        ModelLoadError: unknown mode, torchao missing, or hardware that cannot run the mode.
    """
    if mode == "none":
        return
    if mode not in QUANTIZATIONS:
        raise ModelLoadError(f"unsupported quantization '{mode}' "
                             f"(supported: {', '.join(QUANTIZATIONS)})")
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError as err:
        raise ModelLoadError(f"quantization '{mode}' needs torchao: {err}") from None
    if mode == "nvfp4":
        import torch

        if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 10:
            raise ModelLoadError("quantization 'nvfp4' needs an NVIDIA Blackwell GPU "
                                 "(compute capability >= 10.0)")
        from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

        config = NVFP4DynamicActivationNVFP4WeightConfig()
    elif mode == "int8_weight_only":
        config = Int8WeightOnlyConfig()
    else:
        config = Int8DynamicActivationInt8WeightConfig()
    try:
        quantize_(model, config)
    except (RuntimeError, NotImplementedError, ValueError) as err:
        raise ModelLoadError(f"quantization '{mode}' failed on {device}: {err}") from None


def load_sam3(source: str, device: str = "cpu", dtype: str = "float32",
              with_tracker: bool = False, quantization: str = "none") -> LoadedSam3:
    """Load a SAM3 checkpoint.

    Args:
        source: Hugging Face id (e.g. "facebook/sam3") or a local checkpoint folder.
        device: "cpu", "cuda", "cuda:N" or "auto".
        dtype: One of `DTYPES`.
        with_tracker: Load the video model (detector + memory tracker sharing one vision
            backbone) instead of the image detector alone.
        quantization: One of `QUANTIZATIONS` (torchao, applied after moving to the device).

    Raises:
        ModelLoadError: with the reason (missing folder, not a checkpoint, unreachable or gated
            id, a checkpoint without the model asked for, CUDA absent, unsupported dtype).
    """
    from transformers import Sam3Model, Sam3Processor, Sam3VideoModel

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    # Before anything is built: a wrong checkpoint kind would otherwise build a randomly
    # initialised model (seconds, gigabytes) and fail later on a tensor shape.
    config = checkpoint_config(source)
    check_checkpoint_kind(config, source, with_tracker)
    model_type = str(config.get("model_type"))
    local = _local_folder(source)
    stamps = None
    if local is not None:
        from sam3_ros.core.text_cache import checkpoint_stamps

        try:
            stamps = checkpoint_stamps(local)
        except OSError:
            stamps = None
    detector_cls = _lite_text_model_class() if model_type == "sam3_lite_text" else Sam3Model
    processor = _from_pretrained(Sam3Processor, source)
    video_model = None
    if with_tracker:
        video_model = _from_pretrained(Sam3VideoModel, source, dtype=torch_dtype)
        video_model = video_model.to(torch_device).eval()
        detector = video_model.detector_model
    else:
        detector = _from_pretrained(detector_cls, source, dtype=torch_dtype)
        detector = detector.to(torch_device).eval()
    apply_quantization(video_model if video_model is not None else detector, quantization,
                       torch_device)
    channels_last_mask_decoder(detector, torch_device)
    return LoadedSam3(source, detector, processor, video_model, torch_device, torch_dtype,
                      quantization=quantization, checkpoint_dir=resolved_checkpoint_dir(source),
                      model_type=model_type, checkpoint_stamps=stamps)


def channels_last_mask_decoder(detector: Any, device: Any) -> bool:
    """Store the detector's mask-decoder convolutions channels-last (NHWC) on the CPU.

    oneDNN runs CPU convolutions in NHWC: with the checkpoint's NCHW weights each convolution
    of the pixel decoder (256 channels at 288x288 for 1008 px) reordered its input and output,
    ~0.15 s per prompt at full size. NHWC weights make the convolutions take and give NHWC, so
    the reorders go: the heads ran 1.40 -> 1.17 s (bf16) and 2.84 -> 2.49 s (fp32) per prompt
    (README). Results differ from NCHW only by the convolutions' summation order (scores
    identical, a few mask pixels at the threshold). Not applied on GPUs (not measured there).

    Returns:
        Whether it was applied.
    """
    import torch

    mask_decoder = getattr(detector, "mask_decoder", None)
    if device.type != "cpu" or mask_decoder is None:
        return False
    mask_decoder.to(memory_format=torch.channels_last)
    return True


def _lite_text_model_class() -> Any:
    """transformers' `Sam3LiteTextModel`, or a ModelLoadError naming what is missing."""
    try:
        from transformers.models.sam3_lite_text import Sam3LiteTextModel
    except ImportError as err:
        import transformers

        raise ModelLoadError(
            "this is a SAM3-LiteText checkpoint (model_type 'sam3_lite_text'); transformers "
            f"{transformers.__version__} has no Sam3LiteTextModel ({err}); install a "
            "transformers release that includes models/sam3_lite_text") from None
    return Sam3LiteTextModel


def resolved_checkpoint_dir(source: str) -> Path | None:
    """The local folder holding the checkpoint's files: the folder itself, or for a hub id
    the snapshot transformers resolved in the Hugging Face cache (None when not found)."""
    local = _local_folder(source)
    if local is not None:
        return local.resolve()
    try:
        from transformers.utils import cached_file

        path = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError, TypeError):
        return None
    return Path(path).parent if path else None

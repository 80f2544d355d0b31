"""SAM3 image preprocessing on the model's device: resize and normalise the uint8 frame there.

transformers' `Sam3ImageProcessor` (a torchvision backend) turns an (H, W, 3) uint8 frame into
(1, 3, S, S) float32 pixel values on the CPU:

1. resize to size["height"] x size["width"] (aspect ratio ignored), bilinear, antialias=True,
   align_corners=False, *in uint8*: on an AVX2/AVX512/ARM CPU torch's native uint8 kernel
   (fixed-point weights, result rounded to uint8); elsewhere, and on a GPU, torchvision
   interpolates in float32 and rounds back to uint8;
2. fused rescale + normalise in float32: (x - mean / rescale_factor) / (std / rescale_factor).

`DevicePreprocessor` does the same with torch ops where the model lives, from the settings of
the loaded processor (refusing any it does not reproduce), so only the uint8 bytes cross the
bus (through a reused pinned buffer, asynchronously) and the float work runs on the GPU:

* On the CPU it uses the same native uint8 kernel as torchvision: bit-exact with the processor.
* On a GPU (and on CPUs without the native kernel) it interpolates in float32 and rounds to
  uint8 with the same operations as torchvision there, i.e. the processor's own arithmetic on
  that device (bit-exact with it on such a CPU, tested; not run on a GPU here). Against the
  processor run on an AVX2 CPU (the default path) a value then differs by at most one uint8
  level (`PARITY_MAX_LEVELS`): the CPU kernel uses fixed-point weights and rounds
  its horizontal pass to uint8 before the vertical one, the float kernel rounds once at the end.
  One level is rescale_factor / std in normalised units (2/255 = 0.0078 for SAM3's std 0.5).
"""

from __future__ import annotations

import platform
import threading
import warnings
from typing import Any

import numpy as np

from sam3_ros.core.errors import ConfigError, InvalidImageError

_READ_ONLY_WARNING = "The given NumPy array is not writable"
_read_only_warning_ignored = False
_read_only_warning_lock = threading.Lock()


def ignore_read_only_warning(rgb: np.ndarray) -> None:
    """Before wrapping a read-only frame in a tensor: ignore torch's warning about it.

    The nodes' frames are views of the received sample (read-only bytes, see
    `core.image_cdr`) and nothing writes into them; torch has no read-only tensors and warns
    once per process ("The given NumPy array is not writable"). The filter for that one
    message is installed once, process-wide, at the first read-only frame: a
    `warnings.catch_warnings()` around every wrapping would swap the process's filters from
    the compute thread on every frame (not thread-safe before Python 3.14) and reset every
    module's once-only warning registry, so other libraries' one-time warnings would repeat
    on every frame.
    """
    global _read_only_warning_ignored
    if rgb.flags.writeable or _read_only_warning_ignored:
        return
    with _read_only_warning_lock:
        if not _read_only_warning_ignored:
            warnings.filterwarnings("ignore", message=_READ_ONLY_WARNING, category=UserWarning)
            _read_only_warning_ignored = True


PREPROCESS_MODES = ("auto", "device", "processor")
"""Values of the `preprocessing` parameter (words, not true/false, which YAML would turn into
booleans). auto: `DevicePreprocessor` on the model's device (GPU or CPU: on the CPU it is
bit-exact with the processor and faster, see the README), falling back to transformers'
processor when the processor has a setting it does not reproduce; device: `DevicePreprocessor`
or a `ConfigError` saying which setting; processor: always transformers' processor (on the CPU,
then `.to(device)`, as before)."""

PARITY_MAX_LEVELS = 1
"""Largest difference, in uint8 levels before normalisation, between the float resize (GPU) and
the processor's native uint8 resize (AVX2 CPU); 0 where both run the same kernel."""

_BILINEAR = 2
"""PIL.Image.Resampling.BILINEAR, the only resample value reproduced."""


def native_uint8_resize(device: Any) -> bool:
    """Whether torchvision resizes uint8 bilinear natively on `device` (as in its
    `_do_native_uint8_resize_on_cpu`): CPUs with AVX2/AVX512 or ARM; never on a GPU."""
    import torch

    if torch.device(device).type != "cpu":
        return False
    return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            or platform.machine() in ("aarch64", "arm64"))


def _per_channel(value: Any, name: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != 3:
        raise ConfigError(f"image processor {name} {value!r}: 3 values (RGB) expected")
    return values[0], values[1], values[2]


def _size_of(size: Any) -> tuple[int, int]:
    def get(key: str) -> Any:
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    others = [key for key in ("shortest_edge", "longest_edge", "max_height", "max_width")
              if get(key)]
    height, width = get("height"), get("width")
    if others or not height or not width:
        raise ConfigError(f"image processor size {size!r} is not reproduced on the device: only "
                          "a fixed {'height', 'width'} resize is")
    return int(height), int(width)


class DevicePreprocessor:
    """(H, W, 3) uint8 RGB -> (1, 3, S_h, S_w) pixel values on a device, like the processor.

    Args:
        image_processor: The loaded `Sam3ImageProcessor` (`processor.image_processor`); its
            size, resample, rescale and normalisation settings are read from it.
        device: Where to compute (the model's device).
        dtype: The dtype of the result (the model's); computed in float32, converted last.
        native_uint8: Resize uint8 natively (torch's CPU kernel) instead of float32 + rounding;
            None decides as torchvision does on that device (`native_uint8_resize`). False on
            the CPU runs the GPU's arithmetic there (tests).

    Raises:
        ConfigError: a processor setting this class does not reproduce (a backend other than
            torchvision, a resample other than bilinear, no resize or an aspect-preserving one,
            centre crop, padding, channels-last output, a processor pinned to a device).

    Per frame: on a GPU the frame is copied into a pinned host buffer (reused while the frame
    size stays the same and its previous upload has finished, checked without waiting) and
    uploaded with non_blocking=True into a reused device buffer; nothing waits for the GPU.
    The result is a new tensor every call (callers keep earlier frames' pixel values).
    """

    def __init__(self, image_processor: Any, device: Any, dtype: Any,
                 native_uint8: bool | None = None):
        import torch

        p = image_processor

        def setting(name: str) -> Any:
            return getattr(p, name, None)

        backend = setting("backend")
        if backend != "torchvision":
            raise ConfigError(f"image processor backend {backend!r} is not reproduced on the "
                              "device (only transformers' torchvision backend, whose "
                              "arithmetic this class follows)")
        resample = setting("resample")
        if resample != _BILINEAR and getattr(resample, "value", None) != "bilinear":
            raise ConfigError(f"image processor resample {setting('resample')!r} is not "
                              "reproduced on the device (only bilinear, 2)")
        if not setting("do_resize"):
            raise ConfigError("image processor with do_resize=False is not reproduced on the "
                              "device (SAM3 needs the fixed model size)")
        self.size = _size_of(setting("size"))
        for flag in ("do_center_crop", "do_pad"):
            if setting(flag):
                raise ConfigError(f"image processor {flag}=True is not reproduced on the device")
        data_format = setting("data_format")
        if data_format not in (None, "channels_first") and getattr(
                data_format, "value", None) != "channels_first":
            raise ConfigError(f"image processor data_format {data_format!r} is not reproduced "
                              "on the device (channels first only)")
        if setting("device") is not None:
            raise ConfigError(f"image processor pinned to device {setting('device')!r} is not "
                              "reproduced (its arithmetic would depend on that device)")
        self.device = torch.device(device)
        self.dtype = dtype
        if native_uint8 and self.device.type != "cpu":
            raise ConfigError("native uint8 resizing exists on the CPU only")
        self.native_uint8 = (native_uint8_resize(self.device) if native_uint8 is None
                             else bool(native_uint8))
        # The processor's fused rescale + normalise (TorchvisionBackend.rescale_and_normalize):
        # float32 tensors of mean and std divided by the rescale factor, then (x - m) / s.
        do_rescale, do_normalize = bool(setting("do_rescale")), bool(setting("do_normalize"))
        self._scale: float | None = None
        self._mean = self._std = None
        if do_normalize:
            mean = torch.tensor(_per_channel(setting("image_mean"), "image_mean"))
            std = torch.tensor(_per_channel(setting("image_std"), "image_std"))
            if do_rescale:
                factor = float(setting("rescale_factor"))
                mean, std = mean * (1.0 / factor), std * (1.0 / factor)
            if not bool(torch.all(std != 0)):
                raise ConfigError(f"image processor image_std {setting('image_std')!r} has a 0")
            self._mean = mean.view(1, 3, 1, 1).to(self.device)
            self._std = std.view(1, 3, 1, 1).to(self.device)
        elif do_rescale:
            self._scale = float(setting("rescale_factor"))
        self._lock = threading.Lock()
        """The reused buffers belong to one call at a time."""
        self._host: Any = None
        self._host_event: Any = None
        self._frame: Any = None
        self._float_frame: Any = None

    def _upload(self, rgb: np.ndarray) -> Any:
        """The frame as (H, W, 3) uint8 on the device (a reused buffer on a GPU)."""
        import torch

        if self.device.type != "cuda":
            ignore_read_only_warning(rgb)
            return torch.from_numpy(rgb)
        shape = rgb.shape
        host = self._host
        # A pinned buffer whose last upload may still be in flight is not overwritten: a fresh
        # one comes from torch's caching host allocator (which frees the old one only after
        # that copy), so the host never waits for the GPU here.
        if host is None or host.shape != shape or not self._host_event.query():
            host = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._host = host
            self._host_event = torch.cuda.Event()
        host.numpy()[...] = rgb
        if self._frame is None or self._frame.shape != shape:
            self._frame = torch.empty(shape, dtype=torch.uint8, device=self.device)
        # Both on the model's device's current stream (that device need not be the current
        # one): the copy, and the event that says when the pinned buffer may be reused.
        stream = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):
            self._frame.copy_(host, non_blocking=True)
        self._host_event.record(stream)
        return self._frame

    def __call__(self, rgb: np.ndarray) -> Any:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InvalidImageError(
                f"model input must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        if not rgb.flags.c_contiguous:
            rgb = np.ascontiguousarray(rgb)
        with self._lock:
            return self._preprocess(rgb)

    def _preprocess(self, rgb: np.ndarray) -> Any:
        import torch
        from torch.nn.functional import interpolate

        # (1, 3, H, W) view of the HWC bytes: channels-last, the layout torch's uint8 kernel
        # works in (no repacking).
        frame = self._upload(rgb).permute(2, 0, 1).unsqueeze(0)
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        # No inference_mode: the result is an ordinary tensor like the processor's (nothing
        # here requires grad, so no graph is recorded either way).
        if (height, width) == self.size:
            x = frame.to(torch.float32, memory_format=torch.contiguous_format)
        elif self.native_uint8:
            x = interpolate(frame, size=self.size, mode="bilinear", align_corners=False,
                            antialias=True)
            x = x.to(torch.float32, memory_format=torch.contiguous_format)
        else:
            # torchvision's path for uint8 on a GPU: float32, interpolate, round, uint8.
            if self._float_frame is None or self._float_frame.shape != frame.shape:
                self._float_frame = torch.empty(frame.shape, dtype=torch.float32,
                                                device=self.device)
            self._float_frame.copy_(frame)
            x = interpolate(self._float_frame, size=self.size, mode="bilinear",
                            align_corners=False, antialias=True)
            x = x.round_().clamp_(0, 255)
        if self._mean is not None:
            x = x.sub_(self._mean).div_(self._std)
        elif self._scale is not None:
            x = x.mul_(self._scale)
        return x.to(self.dtype)


def make_device_preprocessor(mode: str, image_processor: Any, device: Any,
                             dtype: Any) -> tuple[DevicePreprocessor | None, str]:
    """The preprocessor `mode` (one of `PREPROCESS_MODES`) asks for.

    Returns:
        (preprocessor, why): preprocessor None means transformers' processor; `why` says which
        path runs and, for auto's fallback, the processor setting that caused it.

    Raises:
        ConfigError: an unknown mode, or mode device with a processor setting not reproduced.
    """
    if mode not in PREPROCESS_MODES:
        raise ConfigError(f"preprocessing must be one of {list(PREPROCESS_MODES)}, got {mode!r}")
    if mode == "processor":
        return None, "transformers' image processor on the CPU (preprocessing: processor)"
    try:
        pre = DevicePreprocessor(image_processor, device, dtype)
    except ConfigError as err:
        if mode == "device":
            raise
        return None, f"transformers' image processor on the CPU ({err})"
    return pre, f"resize and normalise on {pre.device} (DevicePreprocessor)"

"""DevicePreprocessor (resize + normalise with torch ops on the model's device) vs transformers'
Sam3ImageProcessor: parity, refusals, dtypes, and detections through Sam3Segmenter.

Tolerance, in normalised units (the processor's output scale):
* The CPU path (torch's native uint8 resize, as torchvision uses on AVX2/AVX512/ARM CPUs) is
  bit-exact: max abs difference 0.
* The GPU arithmetic (float32 resize, round to uint8: torchvision's own path on a GPU), run here
  on the CPU with native_uint8=False, equals the processor forced onto that same path bit for
  bit, and differs from the processor's default CPU output by at most one uint8 level, i.e.
  rescale_factor / std = 2/255 = 0.0078 for SAM3's std 0.5; mean abs difference below 0.003
  (measured 0.0004 to 0.0016 on random frames). Not exact because the native uint8 kernel
  uses fixed-point weights and rounds its horizontal pass to uint8 before the vertical pass;
  the float kernel rounds once at the end (both antialiased bilinear).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Sam3ImageProcessor

from sam3_ros.core.errors import ConfigError, InvalidImageError
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.preprocess import (
    PARITY_MAX_LEVELS,
    DevicePreprocessor,
    make_device_preprocessor,
    native_uint8_resize,
)
from sam3_ros.core.prompts import PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession

FRAMES = [(480, 640), (720, 1280), (96, 128), (300, 200), (37, 100), (1500, 900), (112, 112)]
"""(H, W): landscape, portrait, tiny, larger than the model size, equal to it."""
MEAN_TOLERANCE = 0.003


def _frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _reference(processor, rgb: np.ndarray) -> torch.Tensor:
    return processor(images=rgb, return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.mark.parametrize("size", [(112, 112), (1008, 1008), (64, 96)])
def test_cpu_path_is_bit_exact_with_the_processor(size):
    processor = Sam3ImageProcessor(size={"height": size[0], "width": size[1]})
    pre = DevicePreprocessor(processor, "cpu", torch.float32)
    assert pre.native_uint8 == native_uint8_resize("cpu")
    for seed, (height, width) in enumerate(FRAMES):
        rgb = _frame(height, width, seed)
        out = pre(rgb)
        assert out.shape == (1, 3, *size) and out.dtype == torch.float32
        assert out.is_contiguous()
        assert torch.equal(out, _reference(processor, rgb)), (size, height, width)


def test_native_uint8_decision_matches_torchvision():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional._geometry import _do_native_uint8_resize_on_cpu

    assert native_uint8_resize("cpu") == _do_native_uint8_resize_on_cpu(
        InterpolationMode.BILINEAR)
    assert native_uint8_resize("cuda") is False


@pytest.mark.parametrize("size", [112, 1008])
def test_gpu_arithmetic_parity(size, monkeypatch):
    """The float path (what runs on a GPU), on CPU torch."""
    processor = Sam3ImageProcessor(size={"height": size, "width": size})
    pre = DevicePreprocessor(processor, "cpu", torch.float32, native_uint8=False)
    one_level = processor.rescale_factor / min(processor.image_std)
    assert one_level == pytest.approx(2 / 255)
    for seed, (height, width) in enumerate(FRAMES):
        rgb = _frame(height, width, seed)
        out = pre(rgb)
        diff = (out - _reference(processor, rgb)).abs()
        assert diff.max().item() <= PARITY_MAX_LEVELS * one_level + 1e-6, (height, width)
        assert diff.mean().item() < MEAN_TOLERANCE, (height, width)
    # Bit-exact with the processor on the same (float) path, as torchvision runs it on a GPU.
    import torchvision.transforms.v2.functional._geometry as geometry

    monkeypatch.setattr(geometry, "_do_native_uint8_resize_on_cpu", lambda _: False)
    for seed, (height, width) in enumerate(FRAMES[:4]):
        rgb = _frame(height, width, seed)
        assert torch.equal(pre(rgb), _reference(processor, rgb)), (height, width)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("native", [True, False])
def test_dtype_is_the_models_and_converted_last(dtype, native):
    processor = Sam3ImageProcessor(size={"height": 112, "width": 112})
    pre = DevicePreprocessor(processor, "cpu", dtype, native_uint8=native)
    reference = DevicePreprocessor(processor, "cpu", torch.float32, native_uint8=native)
    rgb = _frame(480, 640)
    out = pre(rgb)
    assert out.dtype == dtype
    # Computed in float32 and converted once, as the processor path's .to(device, dtype).
    assert torch.equal(out, reference(rgb).to(dtype))
    if native and native_uint8_resize("cpu"):
        assert torch.equal(out, _reference(processor, rgb).to(dtype))


def test_non_contiguous_frames_and_size_changes():
    processor = Sam3ImageProcessor(size={"height": 112, "width": 112})
    pre = DevicePreprocessor(processor, "cpu", torch.float32)
    big = _frame(480, 640)
    for rgb in (big[:, ::2], big[::3, 100:300], big, _frame(200, 300)):
        expected = _reference(processor, np.ascontiguousarray(rgb))
        assert torch.equal(pre(rgb), expected)


def test_results_are_new_tensors_each_call():
    """Callers (the runtime) keep earlier frames' pixel values: nothing is overwritten."""
    processor = Sam3ImageProcessor(size={"height": 112, "width": 112})
    for native in (True, False):
        pre = DevicePreprocessor(processor, "cpu", torch.float32, native_uint8=native)
        first_frame, second_frame = _frame(96, 128, 1), _frame(96, 128, 2)
        first = pre(first_frame)
        kept = first.clone()
        second = pre(second_frame)
        assert torch.equal(first, kept) and not torch.equal(first, second)


def test_bad_frames_are_refused():
    pre = DevicePreprocessor(Sam3ImageProcessor(size={"height": 112, "width": 112}), "cpu",
                             torch.float32)
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                np.zeros((10, 10, 3), np.float32)):
        with pytest.raises(InvalidImageError, match="uint8 RGB"):
            pre(bad)


@pytest.mark.parametrize("settings, message", [
    ({"resample": 3}, "resample 3"),
    ({"resample": 0}, "resample 0"),
    ({"do_resize": False}, "do_resize=False"),
    ({"size": {"shortest_edge": 1008}}, "fixed"),
    ({"size": {"longest_edge": 1008, "shortest_edge": 500}}, "fixed"),
    ({"do_center_crop": True, "crop_size": {"height": 100, "width": 100}}, "do_center_crop"),
    ({"do_pad": True}, "do_pad"),
    ({"data_format": "channels_last"}, "data_format"),
    ({"device": "cpu"}, "pinned to device"),
    ({"image_mean": [0.5, 0.5]}, "3 values"),
])
def test_unsupported_processor_settings_are_refused(settings, message):
    settings = {"size": {"height": 112, "width": 112}, **settings}
    processor = Sam3ImageProcessor(**settings)
    with pytest.raises(ConfigError, match=message):
        DevicePreprocessor(processor, "cpu", torch.float32)
    # auto falls back to the processor, saying why; device refuses with the same reason.
    pre, why = make_device_preprocessor("auto", processor, "cpu", torch.float32)
    assert pre is None and message.split()[0] in why
    with pytest.raises(ConfigError, match=message):
        make_device_preprocessor("device", processor, "cpu", torch.float32)


def test_a_processor_of_another_backend_is_refused():
    class PilSam3ImageProcessor(Sam3ImageProcessor):
        backend = "pil"

    processor = PilSam3ImageProcessor(size={"height": 112, "width": 112})
    with pytest.raises(ConfigError, match="backend 'pil'"):
        DevicePreprocessor(processor, "cpu", torch.float32)


@pytest.mark.parametrize("settings", [
    {"do_rescale": False},
    {"do_normalize": False},
    {"do_rescale": False, "do_normalize": False},
    {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    {"image_mean": 0.4, "image_std": 0.3},
])
def test_other_rescale_and_normalise_settings_are_reproduced(settings):
    processor = Sam3ImageProcessor(size={"height": 112, "width": 112}, **settings)
    pre = DevicePreprocessor(processor, "cpu", torch.float32)
    rgb = _frame(300, 200)
    assert torch.equal(pre(rgb), _reference(processor, rgb))


def test_modes():
    processor = Sam3ImageProcessor(size={"height": 112, "width": 112})
    pre, why = make_device_preprocessor("auto", processor, "cpu", torch.float32)
    assert isinstance(pre, DevicePreprocessor) and "cpu" in why
    pre, why = make_device_preprocessor("processor", processor, "cpu", torch.float32)
    assert pre is None and "processor" in why
    with pytest.raises(ConfigError, match="preprocessing must be one of"):
        make_device_preprocessor("true", processor, "cpu", torch.float32)


def _detections(loaded, rgb, preprocessing, native_uint8=None):
    segmenter = Sam3Segmenter(loaded, preprocessing=preprocessing)
    if native_uint8 is not None:
        segmenter._device_preprocessor = DevicePreprocessor(
            loaded.processor.image_processor, loaded.device, loaded.dtype, native_uint8)
    config = SegmenterConfig(score_threshold=0.25, max_detections=1000)
    session = SegmenterSession(segmenter, config, [PromptSpec("mug"), PromptSpec("bottle")])
    return session.process(rgb)[0]


@pytest.mark.parametrize("shape", [(96, 128), (480, 640), (300, 200)])
def test_detections_with_either_path(loaded, shape):
    rgb = _frame(*shape, seed=1)
    reference = _detections(loaded, rgb, "processor")
    assert len(reference) > 0
    on_device = _detections(loaded, rgb, "device")
    assert Sam3Segmenter(loaded).preprocessing.startswith("resize and normalise on cpu")
    if native_uint8_resize("cpu"):
        np.testing.assert_array_equal(on_device.scores, reference.scores)
        np.testing.assert_array_equal(on_device.xyxy, reference.xyxy)
        np.testing.assert_array_equal(on_device.masks, reference.masks)
        np.testing.assert_array_equal(on_device.class_ids, reference.class_ids)
    # The GPU arithmetic (inputs within one uint8 level): on the tiny random checkpoint the
    # same instances, scores within 1e-4, boxes within 0.01 px, < 2 % of mask pixels flipped
    # (measured: 2e-7, 1.3e-4 px, 0.4-0.9 %).
    floated = _detections(loaded, rgb, "device", native_uint8=False)
    assert len(floated) == len(reference)
    np.testing.assert_array_equal(floated.class_ids, reference.class_ids)
    np.testing.assert_allclose(floated.scores, reference.scores, atol=1e-4)
    np.testing.assert_allclose(floated.xyxy, reference.xyxy, atol=0.01)
    assert (floated.masks != reference.masks).mean() < 0.02


def test_bfloat16_model(tiny_checkpoint):
    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="bfloat16")
    rgb = _frame(480, 640)
    device_values = Sam3Segmenter(loaded, preprocessing="device").preprocess(rgb)
    processor_values = Sam3Segmenter(loaded, preprocessing="processor").preprocess(rgb)
    assert device_values.dtype == processor_values.dtype == torch.bfloat16
    if native_uint8_resize("cpu"):
        assert torch.equal(device_values, processor_values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_parity_and_buffer_reuse():
    processor = Sam3ImageProcessor(size={"height": 1008, "width": 1008})
    pre = DevicePreprocessor(processor, "cuda", torch.float32)
    one_level = processor.rescale_factor / min(processor.image_std)
    rgb = _frame(720, 1280)
    out = pre(rgb)
    assert out.device.type == "cuda" and out.is_contiguous()
    diff = (out.cpu() - _reference(processor, rgb)).abs()
    assert diff.max().item() <= PARITY_MAX_LEVELS * one_level + 1e-6
    assert diff.mean().item() < MEAN_TOLERANCE
    torch.cuda.synchronize()
    host, frame = pre._host, pre._frame
    assert host.is_pinned()
    pre(_frame(720, 1280, 5))
    torch.cuda.synchronize()
    assert pre._host is host and pre._frame is frame  # same size, upload finished: reused
    bf16 = DevicePreprocessor(processor, "cuda", torch.bfloat16)(rgb)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, out.to(torch.bfloat16))


_READ_ONLY_SCRIPT = """
import sys, warnings
import numpy as np, torch
from transformers import Sam3ImageProcessor
from sam3_ros.core.preprocess import DevicePreprocessor, ignore_read_only_warning
# What a raw camera subscription gives: a read-only view of the received bytes.
rgb = np.frombuffer(bytes(np.arange(48 * 64 * 3, dtype=np.uint8)), np.uint8).reshape(48, 64, 3)
assert not rgb.flags.writeable
processor = Sam3ImageProcessor(size={"height": 32, "width": 32})
expected = processor(images=rgb.copy(), return_tensors="pt")["pixel_values"]
warnings.filterwarnings("error", message="The given NumPy array is not writable")
if sys.argv[1] == "package":
    assert torch.equal(DevicePreprocessor(processor, "cpu", torch.float32)(rgb), expected)
    ignore_read_only_warning(rgb)
    assert torch.equal(processor(images=rgb, return_tensors="pt")["pixel_values"], expected)
else:
    processor(images=rgb, return_tensors="pt")  # torch warns: an error here
"""


_ONCE_SCRIPT = """
import warnings
import numpy as np, torch
from transformers import Sam3ImageProcessor
from sam3_ros.core.preprocess import DevicePreprocessor
rgb = np.frombuffer(bytes(48 * 64 * 3), np.uint8).reshape(48, 64, 3)
preprocessor = DevicePreprocessor(Sam3ImageProcessor(size={"height": 32, "width": 32}), "cpu",
                                  torch.float32)
shown = []
warnings.showwarning = lambda message, *_: shown.append(str(message))
warnings.simplefilter("default")  # another library's warning: once per code location

def library_step():
    warnings.warn("a library's one-time notice", UserWarning)

for _ in range(5):
    preprocessor(rgb)
    library_step()
print(shown.count("a library's one-time notice"))
"""


def test_read_only_frames_leave_other_warnings_once_only():
    # Swapping the warning filters per frame (catch_warnings) reset every module's once-only
    # registry: another library's one-time warning came back on every frame.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _ONCE_SCRIPT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1"]


@pytest.mark.parametrize("path,warns", [("package", False), ("bare processor", True)])
def test_read_only_frames_without_torch_warning(path, warns):
    # A subprocess each: torch warns once per process, so only a fresh one shows whether
    # the package's paths would warn (the bare call is the control: it must).
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _READ_ONLY_SCRIPT, path],
                            capture_output=True, text=True, timeout=300)
    assert (result.returncode != 0) == warns, result.stderr[-2000:]
    if warns:
        assert "The given NumPy array is not writable" in result.stderr

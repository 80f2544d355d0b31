"""Model loading errors and torchao quantisation on the CPU (pure core)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_params import model_param_defaults

from sam3_ros.core.errors import ModelLoadError
from sam3_ros.core.model_loading import load_sam3, resolve_device, resolve_dtype
from sam3_ros.core.prompts import PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_sam3(str(tmp_path / "nope"))


def test_folder_without_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_sam3(str(tmp_path))


def test_unreachable_hub_id_says_why(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load 'facebook/sam3-does-not-exist'"):
        load_sam3("facebook/sam3-does-not-exist")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_asked_but_absent(device):
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        resolve_device(device)


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "invalid device"), ("mps", "unsupported device"), ("cuda:x", "invalid device")])
def test_bad_device(device, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_device(device)


def test_auto_device_and_dtypes():
    assert resolve_device("auto").type in ("cpu", "cuda")
    cpu = torch.device("cpu")
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(ModelLoadError, match="float16 is not supported on the CPU"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ModelLoadError, match="unsupported dtype 'int4'"):
        resolve_dtype("int4", cpu)


def test_nvfp4_refused_without_blackwell(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="Blackwell"):
        load_sam3(str(tiny_checkpoint), quantization="nvfp4")


@pytest.mark.parametrize("mode", ["int8_weight_only", "int8_dynamic"])
def test_int8_quantisation_runs_on_cpu(tiny_checkpoint, mode):
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    config = SegmenterConfig(score_threshold=0.0, max_detections=5)
    results = {}
    for quantization in ("none", mode):
        loaded = load_sam3(str(tiny_checkpoint), quantization=quantization)
        session = SegmenterSession(Sam3Segmenter(loaded), config, [PromptSpec("mug")])
        results[quantization], _ = session.process(image)
    # Plumbing only (random weights): same shapes, finite scores, boxes roughly alike.
    assert len(results[mode]) == len(results["none"]) == 5
    assert np.isfinite(results[mode].scores).all()
    quantized = [type(m.weight).__name__ for m in loaded.detector.modules()
                 if isinstance(m, torch.nn.Linear)]
    assert any(name != "Parameter" for name in quantized), "no layer was quantised"


def test_bfloat16_on_cpu(tiny_checkpoint):
    loaded = load_sam3(str(tiny_checkpoint), dtype="bfloat16")
    image = np.zeros((32, 40, 3), np.uint8)
    session = SegmenterSession(Sam3Segmenter(loaded), SegmenterConfig(score_threshold=0.0,
                                                                      max_detections=2),
                               [PromptSpec("mug")])
    detections, _ = session.process(image)
    assert detections.scores.dtype == np.float32 and len(detections) == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("with_tracker", [False, True])
def test_mask_decoder_is_channels_last_on_the_cpu_with_the_same_results(tiny_checkpoint, dtype,
                                                                         with_tracker):
    from sam3_ros.core.model_loading import channels_last_mask_decoder

    loaded = load_sam3(str(tiny_checkpoint), dtype=dtype, with_tracker=with_tracker)
    convs = [m.weight for m in loaded.detector.mask_decoder.modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # (1x1 kernels are both)
    image = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    config = SegmenterConfig(score_threshold=0.0, max_detections=20)

    def run(model):
        return SegmenterSession(Sam3Segmenter(model), config, [PromptSpec("mug")]).process(
            image)[0]

    got = run(loaded)
    loaded.detector.mask_decoder.to(memory_format=torch.contiguous_format)  # as before
    want = run(loaded)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.xyxy, want.xyxy)
    # Only the convolutions' summation order differs: a pixel right at the threshold may flip
    # (more in bf16, and which ones depends on the CPU's oneDNN kernel).
    assert (got.masks != want.masks).mean() < (1e-3 if dtype == "float32" else 1e-2)
    assert not channels_last_mask_decoder(loaded.detector, torch.device("meta"))


@pytest.fixture(scope="module")
def tiny_image_checkpoint(tiny_checkpoint, tmp_path_factory):
    """A 'sam3' image checkpoint (Sam3Model only, like a detector-only export)."""
    import shutil

    from transformers import Sam3Model

    from sam3_ros.tools.make_tiny_checkpoint import tiny_sam3_config

    folder = tmp_path_factory.mktemp("tiny_sam3_image")
    for item in tiny_checkpoint.iterdir():  # tokenizer and processor configuration
        if item.name not in ("config.json", "model.safetensors"):
            shutil.copy(item, folder / item.name)
    detector = load_sam3(str(tiny_checkpoint)).detector
    torch.manual_seed(0)
    Sam3Model(tiny_sam3_config(detector.config.text_config.bos_token_id,
                               detector.config.text_config.eos_token_id)).save_pretrained(folder)
    return folder


def test_image_checkpoint_for_the_tracker_is_refused_before_building(tiny_image_checkpoint,
                                                                   monkeypatch):
    import transformers

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the checkpoint kind was checked")

    monkeypatch.setattr(transformers.Sam3VideoModel, "from_pretrained", built)
    monkeypatch.setattr(transformers.Sam3Processor, "from_pretrained", built)
    with pytest.raises(ModelLoadError) as info:
        load_sam3(str(tiny_image_checkpoint), with_tracker=True)
    message = str(info.value)
    assert "is a 'sam3' image model (Sam3Model: detector only, no memory tracker)" in message
    assert "the tracker needs a SAM3 video checkpoint (model_type 'sam3_video'" in message


def test_image_checkpoint_loads_as_detector(tiny_image_checkpoint):
    loaded = load_sam3(str(tiny_image_checkpoint))
    assert loaded.video_model is None and type(loaded.detector).__name__ == "Sam3Model"


@pytest.mark.parametrize(
    ("config", "with_tracker", "message"),
    [({"model_type": "sam3_tracker_video"}, True, "memory tracker only, no text detector"),
     ({"model_type": "sam3_tracker_video"}, False, "the detector needs a SAM3 checkpoint"),
     ({"model_type": "sam3_tracker"}, True, "no memory tracker, no text detector"),
     ({"model_type": "sam2_video", "architectures": ["Sam2VideoModel"]}, True,
      "not a SAM3 checkpoint (model_type 'sam2_video', architectures ['Sam2VideoModel'])"),
     ({}, False, "not a SAM3 checkpoint (model_type None)"),
     ([1, 2], True, "is not a JSON object"),
     ("{not json", True, "cannot read")])
def test_checkpoint_kinds_refused_with_what_they_lack(tmp_path, config, with_tracker, message):
    import json

    text = config if isinstance(config, str) else json.dumps(config)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelLoadError) as info:
        load_sam3(str(tmp_path), with_tracker=with_tracker)
    assert message in str(info.value)


def test_the_last_release_frees_the_weights_while_users_still_hold_the_model(tiny_checkpoint):
    # The backbone and the feature cache still held the detector when the hub's release ran
    # gc + empty_cache: on a GPU the memory stayed reserved after cleanup.
    import gc
    import weakref

    from sam3_ros.core.model_hub import ModelHub, ModelKey

    hub = ModelHub()
    key = ModelKey(str(tiny_checkpoint), "cpu", "float32", "none")
    shared = hub.acquire(key)
    assert hub.acquire(key) is shared
    session = SegmenterSession(Sam3Segmenter(shared.loaded, shared.feature_cache),
                               SegmenterConfig(), [PromptSpec("mug")])
    session.process(np.zeros((48, 64, 3), np.uint8), frame_key=("frame", 1))
    detector = weakref.ref(shared.loaded.detector)
    del session
    hub.release(shared)
    gc.collect()
    assert detector() is not None  # one user left
    hub.release(shared)  # the last one; `shared` is still referenced here, as by a node
    assert detector() is None
    assert shared.backbone is None and shared.feature_cache.backbone is None


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_trim_heap_gives_freed_heap_back_to_the_os():
    # In a child: a heap of 4 KB blocks with every 64th kept, as gigabytes freed in configure
    # leave it. free() returns only the heap's top to the OS; the holes stay resident.
    code = """
import sys
from sam3_ros.core.model_loading import trim_heap

def anon_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024

blocks = [bytearray(4000) for _ in range(100_000)]
kept = blocks[::64]
del blocks
before = anon_mb()
assert trim_heap()
print(before - anon_mb())
"""
    # Without a preloaded allocator or malloc tunables from the environment: glibc's defaults.
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, env=env)
    assert float(out.stdout) > 200, out.stdout  # of ~390 MB freed


def test_configure_and_cleanup_trim_the_heap(tiny_checkpoint, monkeypatch):
    from sam3_ros.core import model_hub, model_loading
    from sam3_ros.core.model_hub import ModelHub, ModelKey

    calls = []
    monkeypatch.setattr(model_hub, "trim_heap", lambda: calls.append("hub"))
    monkeypatch.setattr(model_loading, "trim_heap", lambda: calls.append("release"))
    hub = ModelHub()
    shared = hub.acquire(ModelKey(str(tiny_checkpoint), "cpu", "float32", "none"))
    assert calls == ["hub"]  # the backbone created (another backend frees the torch ViT)
    shared.prepare(lambda line: None)
    assert calls == ["hub", "hub"]
    hub.release(shared)
    assert calls == ["hub", "hub", "release"]


@pytest.mark.parametrize("spelling", ["/data/ckpt/", "/data/ckpt/.", "/data//ckpt",
                                      "/data/x/../ckpt"])
def test_one_folder_spelled_two_ways_is_one_model_key(spelling):
    # '/data/ckpt/' and '/data/ckpt' were two keys: two nodes loaded the model twice.
    from sam3_ros.core.model_hub import ModelKey

    def params(model):
        return model_param_defaults(model=model, device="cpu").__getitem__

    assert ModelKey.from_params(params(spelling)) == ModelKey.from_params(params("/data/ckpt"))
    assert ModelKey.from_params(params("facebook/sam3")).source == "facebook/sam3"


def test_a_relative_folder_stays_a_folder_in_the_model_key():
    # normpath turned './missing_ckpt' into 'missing_ckpt', which reads as a hub id.
    from sam3_ros.core.model_hub import ModelKey

    params = model_param_defaults(model="./missing_ckpt", device="cpu")
    assert ModelKey.from_params(params.__getitem__).source == "./missing_ckpt"


def test_one_checkpoint_and_device_spelled_two_ways_is_one_model_key(tiny_checkpoint, tmp_path,
                                                                     monkeypatch):
    # '~/ck' and '/root/ck/', a link, 'auto' and 'cpu' (no CUDA here) were different keys:
    # two nodes of one pipeline loaded the weights twice.
    from sam3_ros.core.model_hub import ModelKey

    home = tmp_path / "home"
    home.mkdir()
    (home / "ck").symlink_to(tiny_checkpoint)
    monkeypatch.setenv("HOME", str(home))

    def key(model, device="cpu"):
        return ModelKey.from_params(model_param_defaults(model=model, device=device).__getitem__)

    reference = key(str(tiny_checkpoint))
    assert reference.source == os.path.realpath(tiny_checkpoint)
    assert key("~/ck") == key(str(home / "ck") + "/") == reference
    import torch

    if not torch.cuda.is_available():
        assert key(str(tiny_checkpoint), "auto") == reference
    else:
        assert key(str(tiny_checkpoint), "cuda") == key(str(tiny_checkpoint), "cuda:0")
    assert key(str(tiny_checkpoint), "cuda:7").device == "cuda:7"  # fails when loading
    assert key("facebook/sam3").source == "facebook/sam3"

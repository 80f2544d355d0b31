"""`torch_compile` (backend torch), the fast part: parameter validation, refusals, the model
key, and a failed compile failing with its reason. Nothing is compiled here (torch.compile is
replaced where a compile would run); the real inductor compiles and their parity with eager
are in test_torch_compile_inductor.py (a slow tier)."""

from __future__ import annotations

import pytest
from model_params import model_param_defaults

from sam3_ros.core.backbone import (
    BACKEND_OPTION_PARAMS,
    TORCH_COMPILE_MODES,
    TorchBackbone,
    backend_options,
    create_backbone,
)
from sam3_ros.core.errors import ConfigError, ModelLoadError
from sam3_ros.core.model_hub import ModelHub, ModelKey
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.ros.params import MODEL_PARAMS

_SPEC = {spec.name: spec for spec in MODEL_PARAMS}["torch_compile"]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")


def _params(tiny_checkpoint, **overrides) -> dict:
    params = {**model_param_defaults(), "model": str(tiny_checkpoint), "device": "cpu",
              "dtype": "float32", "quantization": "none", "backend": "torch",
              "torch_compile": "none", "compile_heads": False,
              "onnx_artifact_dir": "", "onnx_precision": "fp32", "onnx_provider": "cpu",
              "onnx_threads": 0, "onnx_trt_cache_dir": "", "onnx_trt_fp16": False,
              "onnx_trt_int8": False}
    params.update(overrides)
    return params


def test_parameter_choices_and_validation():
    assert _SPEC.default == "none" and _SPEC.reload
    assert _SPEC.choices == TORCH_COMPILE_MODES == (
        "none", "default", "reduce-overhead", "max-autotune")
    for mode in TORCH_COMPILE_MODES:
        assert _SPEC.check(mode) is None
    assert "must be one of" in _SPEC.check("fast")
    assert _SPEC.coerce(1)[1] is not None  # not a string
    assert "torch_compile" in BACKEND_OPTION_PARAMS["torch"]


def test_invalid_mode_is_refused(loaded):
    with pytest.raises(ConfigError, match="torch_compile must be one of"):
        TorchBackbone(loaded.detector, compile_mode="fast")
    with pytest.raises(ConfigError, match="torch_compile must be one of"):
        create_backbone("torch", loaded, {"compile": "fast"})
    with pytest.raises(ModelLoadError, match="unknown options"):
        create_backbone("torch", loaded, {"compile": "none", "threads": 2})


def test_compile_with_another_backend_is_refused(tiny_checkpoint):
    params = _params(tiny_checkpoint, backend="onnxruntime", torch_compile="default")
    with pytest.raises(ConfigError, match="applies to backend 'torch' only"):
        ModelKey.from_params(params.__getitem__)
    # Left at none it is no option of the other backend (and not in its key).
    params["torch_compile"] = "none"
    assert "compile" not in dict(ModelKey.from_params(params.__getitem__).backend_options)


def test_compile_mode_is_part_of_the_model_key(tiny_checkpoint):
    eager = ModelKey.from_params(_params(tiny_checkpoint).__getitem__)
    compiled = ModelKey.from_params(_params(tiny_checkpoint, torch_compile="default").__getitem__)
    assert dict(eager.backend_options) == {"compile": "none"}
    assert dict(compiled.backend_options) == {"compile": "default"}
    assert eager != compiled  # two nodes differing here never share one (compiled) model
    assert backend_options("torch", _params(tiny_checkpoint).__getitem__) == (("compile", "none"),)


def test_eager_backbone_prepares_nothing(loaded):
    backbone = create_backbone("torch", loaded, {"compile": "none"})
    lines: list[str] = []
    backbone.prepare([1, 2], lines.append)
    assert lines == [] and backbone.prepared_batch_sizes == set()
    assert "compiled" not in backbone.describe()


def test_failed_compile_fails_with_the_reason_and_no_eager_fallback(tiny_checkpoint,
                                                                    monkeypatch):
    import torch

    calls = []

    def fake_compile(module, **kwargs):
        calls.append(kwargs)

        def compiled(pixel_values):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    hub = ModelHub(max_batch=2)
    shared = hub.acquire(ModelKey.from_params(
        _params(tiny_checkpoint, torch_compile="max-autotune").__getitem__))
    try:
        assert calls == [{"fullgraph": True, "mode": "max-autotune"}]
        assert shared.batch_sizes == (1, 2)
        lines: list[str] = []
        with pytest.raises(ModelLoadError, match=r"torch_compile 'max-autotune': compiling the "
                           r"vision backbone for batch size 1 failed: RuntimeError: "
                           r"InductorError: no working C\+\+ compiler"):
            shared.prepare(lines.append)
        assert len(lines) == 1 and "compiling the vision backbone for batch sizes [1, 2]" \
            in lines[0]
        assert shared.backbone.prepared_batch_sizes == set()
        # A frame does not quietly run eager either: it fails the same way.
        with pytest.raises(RuntimeError, match="no working C"):
            shared.backbone(torch.zeros(1, 3, 8, 8))
    finally:
        hub.release(shared)


def test_hub_batch_sizes_follow_max_batch_and_capacity(tiny_checkpoint):
    key = ModelKey.from_params(_params(tiny_checkpoint).__getitem__)
    for max_batch, capacity, expected in ((1, 4, (1,)), (3, 4, (1, 2, 3)), (8, 4, (1, 2, 3, 4))):
        hub = ModelHub(feature_capacity=capacity, max_batch=max_batch)
        shared = hub.acquire(key)
        try:
            assert shared.batch_sizes == expected
        finally:
            hub.release(shared)

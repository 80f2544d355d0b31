"""SAM3-LiteText checkpoints (transformers' Sam3LiteTextModel) as a segmenter model choice."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from parity import clipped_xyxy

from sam3_ros.core.errors import ModelLoadError
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.prompts import BoxExemplar, PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession
from sam3_ros.core.text_cache import TextEmbeddingCache

HAS_LITE_TEXT = importlib.util.find_spec("transformers.models.sam3_lite_text") is not None
needs_lite_text = pytest.mark.skipif(
    not HAS_LITE_TEXT, reason="this transformers has no models/sam3_lite_text (Sam3LiteTextModel)")
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory):
    if not HAS_LITE_TEXT:
        pytest.skip("this transformers has no models/sam3_lite_text (Sam3LiteTextModel)")
    from sam3_ros.tools.make_tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_lite_text"), variant="lite_text")


@pytest.fixture(scope="module")
def lite(lite_checkpoint):
    return load_sam3(str(lite_checkpoint), device="cpu")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)


@needs_lite_text
def test_loads_as_a_lite_text_detector(lite, lite_checkpoint):
    from transformers.models.sam3_lite_text import Sam3LiteTextModel, Sam3LiteTextTextModel

    assert isinstance(lite.detector, Sam3LiteTextModel)
    assert isinstance(lite.detector.text_encoder, Sam3LiteTextTextModel)
    assert lite.video_model is None and lite.model_type == "sam3_lite_text"
    assert lite.checkpoint_dir == lite_checkpoint.resolve()


@needs_lite_text
@pytest.mark.parametrize("exemplar", [None, BoxExemplar(10, 12, 70, 60, True)])
def test_session_bit_exact_with_direct_lite_text_call(lite, image, exemplar):
    spec = PromptSpec("mug", (exemplar,) if exemplar else ())
    session = SegmenterSession(Sam3Segmenter(lite), SegmenterConfig(
        score_threshold=THRESHOLD, max_detections=1000), [spec])
    detections, _ = session.process(image)
    inputs = lite.processor(images=image, text="mug", return_tensors="pt",
                            input_boxes=[[list(exemplar.xyxy)]] if exemplar else None)
    with torch.inference_mode():
        outputs = lite.detector(**inputs)
    ref = lite.processor.post_process_instance_segmentation(
        outputs, threshold=THRESHOLD, mask_threshold=0.5, target_sizes=[image.shape[:2]])[0]
    order = torch.argsort(ref["scores"], descending=True, stable=True)
    assert len(detections) == len(order) > 0
    np.testing.assert_array_equal(detections.scores, ref["scores"][order].numpy())
    np.testing.assert_array_equal(detections.xyxy,
                                  clipped_xyxy(ref["boxes"][order].numpy(), *image.shape[:2]))
    np.testing.assert_array_equal(detections.masks, ref["masks"][order].bool().numpy())


@needs_lite_text
def test_lite_text_prompts_cached_apart_from_sam3(lite, tiny_checkpoint, image, tmp_path):
    sam3 = load_sam3(str(tiny_checkpoint))
    texts = [PromptSpec("mug"), PromptSpec("red cup")]
    config = SegmenterConfig(score_threshold=0.0, max_detections=50)
    SegmenterSession(Sam3Segmenter(sam3, text_cache=TextEmbeddingCache(tmp_path)), config, texts)
    cold = SegmenterSession(Sam3Segmenter(lite, text_cache=TextEmbeddingCache(tmp_path)), config,
                            texts)
    assert cold.segmenter.text_encoder_runs == 1  # other checkpoint, other model class
    warm = SegmenterSession(Sam3Segmenter(lite, text_cache=TextEmbeddingCache(tmp_path)), config,
                            texts)
    assert warm.segmenter.text_encoder_runs == 0
    plain = SegmenterSession(Sam3Segmenter(lite), config, texts)
    a, b = warm.process(image)[0], plain.process(image)[0]
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.masks, b.masks)


@needs_lite_text
def test_tracker_refused_with_the_reason_before_building(lite_checkpoint, monkeypatch):
    import transformers

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the checkpoint kind was checked")

    monkeypatch.setattr(transformers.Sam3VideoModel, "from_pretrained", built)
    monkeypatch.setattr(transformers.Sam3Processor, "from_pretrained", built)
    with pytest.raises(ModelLoadError) as info:
        load_sam3(str(lite_checkpoint), with_tracker=True)
    message = str(info.value)
    assert "'sam3_lite_text' image model" in message
    assert "transformers has no LiteText video model" in message


def test_missing_lite_text_in_transformers_is_a_model_load_error(tmp_path, monkeypatch):
    """A transformers without models/sam3_lite_text: a ModelLoadError, not an ImportError."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam3_lite_text"}))
    monkeypatch.setitem(sys.modules, "transformers.models.sam3_lite_text", None)
    with pytest.raises(ModelLoadError) as info:
        load_sam3(str(tmp_path))
    assert "has no Sam3LiteTextModel" in str(info.value)


@needs_lite_text
def test_cli_writes_a_lite_text_checkpoint(tmp_path):
    import json

    from sam3_ros.tools.make_tiny_checkpoint import main

    assert main([str(tmp_path), "--variant", "lite_text"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sam3_lite_text"

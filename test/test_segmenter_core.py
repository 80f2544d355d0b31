"""Segmenter core (no ROS): parity with transformers, prompt handling, per-frame work counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity import clipped_xyxy

from sam3_ros.core.errors import ConfigError, InvalidImageError, InvalidPromptError
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.prompts import BoxExemplar, PromptSpec, validate_prompts
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession

THRESHOLD = 0.25


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def _session(loaded, prompts, **config) -> SegmenterSession:
    config.setdefault("score_threshold", THRESHOLD)
    config.setdefault("max_detections", 1000)
    return SegmenterSession(Sam3Segmenter(loaded), SegmenterConfig(**config), prompts)


def _sorted(scores, boxes, masks):
    order = torch.argsort(torch.as_tensor(scores), descending=True, stable=True).numpy()
    return np.asarray(scores)[order], np.asarray(boxes)[order], np.asarray(masks)[order]


@pytest.mark.parametrize("exemplar", [None, BoxExemplar(10, 12, 70, 60, True)])
def test_single_prompt_bit_exact_with_direct_call(loaded, image, exemplar):
    spec = PromptSpec("mug", (exemplar,) if exemplar else ())
    detections, _ = _session(loaded, [spec]).process(image)
    inputs = loaded.processor(images=image, text="mug", return_tensors="pt",
                              input_boxes=[[list(exemplar.xyxy)]] if exemplar else None)
    with torch.inference_mode():
        outputs = loaded.detector(**inputs)
    ref = loaded.processor.post_process_instance_segmentation(
        outputs, threshold=THRESHOLD, mask_threshold=0.5, target_sizes=[image.shape[:2]])[0]
    scores, boxes, masks = _sorted(ref["scores"], ref["boxes"], ref["masks"].bool())
    assert len(detections) == len(scores) > 0
    np.testing.assert_array_equal(detections.scores, scores)
    np.testing.assert_array_equal(detections.xyxy, clipped_xyxy(boxes, *image.shape[:2]))
    np.testing.assert_array_equal(detections.masks, masks)


def test_multi_prompt_bit_exact_with_embedding_reuse_call(loaded, image):
    """N prompts: one backbone pass broadcast to N, as transformers documents reuse."""
    texts = ["mug", "bottle", "red cup"]
    detections, _ = _session(loaded, [PromptSpec(t) for t in texts]).process(image)
    with torch.inference_mode():
        pixel_values = loaded.processor(images=image, return_tensors="pt")["pixel_values"]
        vision = loaded.detector.get_vision_features(pixel_values=pixel_values)
        tokens = loaded.processor(text=texts, return_tensors="pt")
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        expanded = Sam3VisionEncoderOutput(
            last_hidden_state=vision.last_hidden_state.expand(3, -1, -1),
            fpn_hidden_states=tuple(t.expand(3, -1, -1, -1) for t in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(t.expand(3, -1, -1, -1)
                                        for t in vision.fpn_position_encoding))
        outputs = loaded.detector(vision_embeds=expanded, **tokens)
    results = loaded.processor.post_process_instance_segmentation(
        outputs, threshold=THRESHOLD, mask_threshold=0.5, target_sizes=[image.shape[:2]] * 3)
    scores, boxes, masks = _sorted(torch.cat([r["scores"] for r in results]),
                                   torch.cat([r["boxes"] for r in results]),
                                   torch.cat([r["masks"].bool() for r in results]))
    np.testing.assert_array_equal(detections.scores, scores)
    np.testing.assert_array_equal(detections.xyxy, clipped_xyxy(boxes, *image.shape[:2]))
    np.testing.assert_array_equal(detections.masks, masks)
    class_ids = np.concatenate([np.full(len(r["scores"]), i) for i, r in enumerate(results)])
    order = torch.argsort(torch.cat([r["scores"] for r in results]), descending=True,
                          stable=True).numpy()
    np.testing.assert_array_equal(detections.class_ids, class_ids[order])
    assert detections.labels == tuple(texts[i] for i in detections.class_ids)


def test_chunking_gives_the_same_instances(loaded, image):
    prompts = [PromptSpec(t) for t in ("mug", "bottle", "red cup", "chair", "dog")]
    whole, _ = _session(loaded, prompts, prompts_per_batch=16).process(image)
    chunked, _ = _session(loaded, prompts, prompts_per_batch=2).process(image)
    # Batch size changes float summation order only: same instances, last-ulp differences.
    assert len(whole) == len(chunked)
    np.testing.assert_allclose(whole.scores, chunked.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole.xyxy, chunked.xyxy, rtol=0, atol=1e-3)
    assert (whole.masks != chunked.masks).mean() < 1e-3


def test_a_text_prompt_gives_the_same_instances_whatever_shares_its_batch(loaded, image):
    # The geometry encoder (and its CLS token) runs only for prompts with boxes, as in
    # transformers; with a boxed prompt in its batch, "mug" alone got other scores.
    mixed = [PromptSpec("mug"), PromptSpec("cup", (BoxExemplar(10, 12, 70, 60, True),))]
    alone, _ = _session(loaded, [PromptSpec("mug")], score_threshold=0.0).process(image)
    for per_batch in (1, 2):
        result, _ = _session(loaded, mixed, score_threshold=0.0,
                             prompts_per_batch=per_batch).process(image)
        mug = result.class_ids == 0
        np.testing.assert_allclose(np.sort(result.scores[mug]), np.sort(alone.scores),
                                   rtol=0, atol=1e-6)
        assert (result.class_ids == 1).sum() == len(alone)  # every query kept at 0.0
        # Equal scores keep prompt order, as one batch in prompt order would.
        assert np.all(np.diff(result.scores) <= 0)


def test_a_box_only_prompt_without_a_box_on_this_frame_finds_nothing(loaded, image):
    # Given before the first frame (or the camera's resolution changed): all its boxes fall
    # outside this 96x128 frame. It was decoded as the bare word "visual" and found things.
    prompts = [PromptSpec("mug"), PromptSpec("", (BoxExemplar(200, 200, 300, 300, True),))]
    result, _ = _session(loaded, prompts, score_threshold=0.0).process(image)
    assert len(result) > 0 and set(result.class_ids.tolist()) == {0}


@pytest.mark.parametrize("shape", [(3, 64, 3), (1, 100, 3), (3, 3, 3)])
def test_the_processor_path_reads_thin_frames_as_channels_last(loaded, shape):
    # transformers guesses the layout: a frame 1 or 3 pixels tall was read as (C, H, W).
    rgb = np.zeros(shape, np.uint8)
    rgb[..., 0] = 255  # pure red
    processor = Sam3Segmenter(loaded, preprocessing="processor").preprocess(rgb)
    device = Sam3Segmenter(loaded, preprocessing="device").preprocess(rgb)
    torch.testing.assert_close(processor, device, rtol=0, atol=1e-2)
    assert processor[0, 0].mean() > 0.9 and processor[0, 1].mean() < -0.9


def test_backbone_once_per_frame_and_text_once_per_prompt_set(loaded, image, monkeypatch):
    calls = {"text": 0}
    real = loaded.detector.get_text_features

    def counting(*args, **kwargs):
        calls["text"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loaded.detector, "get_text_features", counting)
    session = _session(loaded, [PromptSpec(t) for t in ("mug", "bottle", "cup")],
                       prompts_per_batch=1)
    assert calls["text"] == 1
    cache = session.segmenter.feature_cache
    before = cache.backbone_calls
    for i in range(4):
        session.process(image, frame_key=("frame", i))
    assert cache.backbone_calls - before == 4  # one per frame, not per prompt or chunk
    assert calls["text"] == 1  # never per frame
    session.set_prompts([PromptSpec("dog")])
    assert calls["text"] == 2


def test_max_detections_and_thresholds(loaded, image):
    many, _ = _session(loaded, [PromptSpec("mug")], score_threshold=0.0).process(image)
    capped, _ = _session(loaded, [PromptSpec("mug")], score_threshold=0.0,
                         max_detections=3).process(image)
    assert len(capped) == 3 < len(many)
    np.testing.assert_array_equal(capped.scores, many.scores[:3])
    assert np.all(np.diff(many.scores) <= 0)
    none, _ = _session(loaded, [PromptSpec("mug")], score_threshold=1.0).process(image)
    assert len(none) == 0 and none.masks.shape == (0, 96, 128)


def test_prompt_changes_are_atomic_and_counted(loaded, image):
    session = _session(loaded, [PromptSpec("mug")])
    assert session.prompts.generation == 0
    assert session.set_prompts([PromptSpec("cup"), PromptSpec("dog")]) == [0, 1]
    assert session.prompts.generation == 1
    with pytest.raises(InvalidPromptError):
        session.set_prompts([PromptSpec("x" * 300)])
    assert session.prompts.generation == 1 and session.prompts.labels == ("cup", "dog")
    with pytest.raises(InvalidPromptError, match="tokens"):
        session.set_prompts([PromptSpec("mug " * 40)])
    session.process(image)  # the image size is now known: exemplar boxes are checked
    with pytest.raises(InvalidPromptError, match="outside the 128x96 image"):
        session.set_prompts([PromptSpec("a", (BoxExemplar(0, 0, 200, 10),))])


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([], "at least one prompt"),
        ([PromptSpec("  ")], "prompt 0 is empty"),
        ([PromptSpec("mug"), PromptSpec(" MUG ")], "prompt 1 ('MUG') duplicates prompt 0"),
        # What the model reads: NFC-normalised text, "visual" for a box-only prompt.
        ([PromptSpec("caf\u00e9"), PromptSpec("cafe\u0301")], "prompt 1 ('cafe\u0301') duplicates"),
        ([PromptSpec("", (BoxExemplar(1, 1, 9, 9),)),
          PromptSpec("Visual", (BoxExemplar(1, 1, 9, 9),))], "prompt 1 ('Visual') duplicates"),
        ([PromptSpec("a" * 201)], "201 characters"),
        ([PromptSpec(f"p{i}") for i in range(5)], "5 prompts given, at most 4"),
        ([PromptSpec("a", (BoxExemplar(float("nan"), 0, 1, 1),))], "4 finite numbers"),
        ([PromptSpec("a", (BoxExemplar(5, 0, 5, 1),))], "is empty"),
    ],
)
def test_prompt_validation_errors(prompts, message):
    with pytest.raises(InvalidPromptError) as info:
        validate_prompts(prompts, max_prompts=4, image_size_hw=(96, 128))
    assert message in str(info.value)


def test_box_only_prompt_uses_visual_text():
    spec = validate_prompts([PromptSpec("", (BoxExemplar(1, 1, 5, 5),))], 4)[0]
    assert spec.model_text == "visual" and "box exemplar" in spec.label


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"score_threshold": 1.5}, "score_threshold must be in [0, 1], got 1.5"),
        ({"mask_threshold": -0.1}, "mask_threshold must be in [0, 1]"),
        ({"max_detections": 0}, "max_detections must be an integer >= 1, got 0"),
        ({"prompts_per_batch": 2.5}, "prompts_per_batch must be an integer >= 1"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(ConfigError) as info:
        SegmenterConfig(**config)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
            np.zeros((10, 10, 3), np.float32)])
def test_bad_model_input_is_a_clear_error(loaded, bad):
    with pytest.raises(InvalidImageError, match=r"\(H, W, 3\) uint8 RGB"):
        _session(loaded, [PromptSpec("mug")]).process(bad)


@pytest.mark.parametrize(("prompts", "config", "reason"), [
    ([PromptSpec("a"), PromptSpec("b"), PromptSpec("c")], {"max_prompts": 2}, "at most 2"),
    ([PromptSpec("a" * 300)], {"score_threshold": 0.9}, "prompt 0"),
    (None, {"max_prompts": 1}, "max_prompts 1 is below the 2 prompts now active"),
])
def test_a_refused_update_changes_nothing(loaded, prompts, config, reason):
    # One parameter call applied its changes one by one: a refused call left the earlier ones.
    from sam3_ros.core.bytetrack import ByteTracker

    tracker = ByteTracker()
    session = SegmenterSession(Sam3Segmenter(loaded), SegmenterConfig(score_threshold=0.3),
                               [PromptSpec("mug"), PromptSpec("cup")], tracker=tracker)
    before = (session.prompts, session.config)
    with pytest.raises((InvalidPromptError, ConfigError), match=reason):
        session.update(prompts, SegmenterConfig(**config), ByteTracker())
    assert (session.prompts, session.config) == before and session._tracker is tracker
    session.update([PromptSpec("a")], SegmenterConfig(max_prompts=1), None)
    assert session.prompts.labels == ("a",) and session.config.max_prompts == 1
    assert session._tracker is None and session.prompts.generation == 1


@pytest.mark.parametrize(("max_detections", "memory_mb", "height", "width", "limit"), [
    (100, 1024, 480, 640, 100),
    (10_000, 1024, 480, 640, 3495),
    (10_000, 1024, 1080, 1920, 517),
    (10_000, 1024, 4096, 4096, 64),
    (10_000, 1, 4096, 4096, 1),  # one mask is over the budget: the best one is still kept
    (5, 1, 1, 1, 5),
    (10_000, 1024.0, 480, 640, 3495),  # a float that is an integer is accepted: and works
])
def test_detection_limit_keeps_masks_within_memory(max_detections, memory_mb, height, width,
                                                   limit):
    config = SegmenterConfig(max_detections=max_detections, max_mask_memory_mb=memory_mb)
    assert config.detection_limit(height, width) == limit


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_max_mask_memory_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match=f"max_mask_memory_mb must be an integer >= 1, got "
                                          f"{value}"):
        SegmenterConfig(max_mask_memory_mb=value)


def test_masks_stay_within_the_memory_budget(loaded):
    # Valid parameters (score_threshold 0, max_detections 10000) let one large frame allocate
    # instances x pixels bytes of masks: 168 GB at 16 MP with the real model.
    rgb = np.random.default_rng(3).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    session = _session(loaded, [PromptSpec("mug"), PromptSpec("cup")], score_threshold=0.0,
                       max_detections=10_000, max_mask_memory_mb=3)
    detections, _ = session.process(rgb)
    assert len(detections) == 3 and detections.masks.shape == (3, 1024, 1024)
    assert session.frames_at_mask_memory_cap == 1
    unlimited, _ = _session(loaded, [PromptSpec("mug"), PromptSpec("cup")], score_threshold=0.0,
                            max_detections=10_000, max_mask_memory_mb=65536).process(rgb)
    assert len(unlimited) > 3  # the cap took effect: these are its highest scores
    np.testing.assert_array_equal(detections.scores, unlimited.scores[:3])
    np.testing.assert_array_equal(detections.masks, unlimited.masks[:3])



def test_boxes_are_clipped_to_the_image(loaded, image, monkeypatch):
    # SAM3's boxes are a centre and a size in (0, 1): an instance at the frame's edge has a
    # corner outside it in transformers' output; the package publishes it clipped. The tiny
    # model's boxes sit mid-frame: their left and bottom edges are moved out.
    real = loaded.detector.forward

    def at_the_edge(*args, **kwargs):
        outputs = real(*args, **kwargs)
        boxes = outputs.pred_boxes.clone()
        boxes[..., 0] -= 0.3
        boxes[..., 3] += 0.3
        outputs.pred_boxes = boxes
        return outputs

    monkeypatch.setattr(loaded.detector, "forward", at_the_edge)
    detections, _ = _session(loaded, [PromptSpec("mug")], score_threshold=0.0).process(image)
    inputs = loaded.processor(images=image, text="mug", return_tensors="pt")
    with torch.inference_mode():
        outputs = loaded.detector(**inputs)
    ref = loaded.processor.post_process_instance_segmentation(
        outputs, threshold=0.0, mask_threshold=0.5, target_sizes=[image.shape[:2]])[0]
    height, width = image.shape[:2]
    scores, raw, _ = _sorted(ref["scores"], ref["boxes"], ref["masks"])
    assert (raw[:, 0] < 0).all() and (raw[:, 3] > height).all()
    np.testing.assert_array_equal(detections.scores, scores)
    np.testing.assert_array_equal(detections.xyxy, clipped_xyxy(raw, height, width))
    assert (detections.xyxy[:, 0] == 0).all() and (detections.xyxy[:, 3] == height).all()

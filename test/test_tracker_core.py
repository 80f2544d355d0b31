"""Tracker session (no ROS): ids, prompts, bounded memory, time jumps, realtime mode, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3_ros.core.errors import ConfigError, InvalidPromptError, ModelLoadError
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.tracker import ObjectPromptSpec, TrackerConfig, TrackerSession
from sam3_ros.core.vision_features import VisionFeatureCache

H, W = 90, 120
FRAME_NS = 33_000_000


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_sam3(str(tiny_checkpoint), with_tracker=True)


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    # A slowly shifting scene, so frames differ like a moving camera's.
    return [np.roll(base, shift=i, axis=1) for i in range(count)]


def _session(loaded, **config) -> TrackerSession:
    return TrackerSession(loaded, TrackerConfig(**config))


def _point(object_id=-1, x=40.0, y=30.0, label=""):
    return ObjectPromptSpec(object_id, label, ((x, y, True),))


def test_caller_ids_persist_and_auto_ids_follow(loaded):
    session = _session(loaded)
    ids = session.add_objects([_point(7, label="mug"), ObjectPromptSpec(-1, box=(5, 5, 50, 40)),
                               _point(-1, 80, 60)])
    assert ids == [7, 8, 9]
    for i, frame in enumerate(_frames(6)):
        det = session.process_frame(frame, stamp_ns=i * FRAME_NS)
        np.testing.assert_array_equal(det.object_ids, [7, 8, 9])
        np.testing.assert_array_equal(det.age_frames, [i, i, i])
        assert det.labels[0] == "mug" and (det.class_ids == -1).all()
        assert det.masks.shape == (3, H, W)


def test_refine_remove_reset(loaded):
    session = _session(loaded)
    session.add_objects([_point(1), _point(2, 80, 60)])
    frames = _frames(6)
    session.process_frame(frames[0], 0)
    assert session.add_objects([ObjectPromptSpec(1, points=((45.0, 35.0, False),))],
                               refine=True) == [1]
    session.process_frame(frames[1], FRAME_NS)
    session.remove_objects([1])
    det = session.process_frame(frames[2], 2 * FRAME_NS)
    np.testing.assert_array_equal(det.object_ids, [2])
    assert session.memory_stats()["objects"] == 1
    session.add_objects([_point(1)])  # a removed id may be used again
    det = session.process_frame(frames[3], 3 * FRAME_NS)
    np.testing.assert_array_equal(det.object_ids, [1, 2])
    session.reset()
    det = session.process_frame(frames[4], 4 * FRAME_NS)
    assert len(det) == 0 and session.object_ids == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.add_objects([]), "no objects given"),
        (lambda s: s.add_objects([ObjectPromptSpec(3)]), "give points and/or a box"),
        (lambda s: s.add_objects([_point(1)]), "id already in use"),
        (lambda s: s.add_objects([_point(5), _point(5)]), "id already in use"),
        (lambda s: s.add_objects([_point(-2)]), "ids are >= 0"),
        (lambda s: s.add_objects([_point(9, x=float("nan"))]), "2 finite numbers"),
        (lambda s: s.add_objects([_point(9, x=500.0)]), "outside the 120x90 image"),
        (lambda s: s.add_objects([ObjectPromptSpec(9, box=(50, 5, 40, 40))]), "is empty"),
        (lambda s: s.add_objects([_point(9, 10, 10), _point(10, 20, 20)]),
         "would exceed max_objects 2"),
        (lambda s: s.add_objects([_point(4)], refine=True), "unknown id"),
        (lambda s: s.remove_objects([1, 4]), "unknown object id(s) [4]"),
        (lambda s: s.remove_objects([]), "no object ids given"),
        (lambda s: s.add_objects([_point(9)], frame_stamp_ns=123), "no held frame has stamp"),
        (lambda s: s.set_text_prompts(["  "]), "prompt 0 is empty"),
        (lambda s: s.set_text_prompts(["mug", "mug"]), "duplicates"),
    ],
)
def test_invalid_requests_are_refused_with_a_reason(loaded, call, message):
    session = _session(loaded, max_objects=2)
    session.add_objects([_point(1)])
    session.process_frame(_frames(1)[0], 0)
    with pytest.raises(InvalidPromptError) as info:
        call(session)
    assert message in str(info.value)
    # The stream goes on with the object it had.
    det = session.process_frame(_frames(2)[1], FRAME_NS)
    np.testing.assert_array_equal(det.object_ids, [1])


def test_prompt_on_a_held_frame_by_stamp(loaded):
    session = _session(loaded)
    session.add_objects([_point(1)])
    frames = _frames(4)
    for i in range(3):
        session.process_frame(frames[i], i * FRAME_NS)
    assert session.add_objects([_point(2, 70, 50)], frame_stamp_ns=FRAME_NS) == [2]
    det = session.process_frame(frames[3], 3 * FRAME_NS)
    np.testing.assert_array_equal(det.object_ids, [1, 2])
    assert det.age_frames[1] == 2  # conditioned on frame 1, now at frame 3


def test_text_prompts_pick_up_instances(loaded):
    session = _session(loaded, score_threshold=0.0, max_objects=5)
    assert session.set_text_prompts(["mug", "bottle"]) == [0, 1]
    det = session.process_frame(_frames(1)[0], 0)
    assert 0 < len(det) <= 5
    assert set(det.class_ids.tolist()) <= {0, 1}
    assert set(det.labels) <= {"mug", "bottle"}
    ids = det.object_ids.tolist()
    det2 = session.process_frame(_frames(2)[1], FRAME_NS)
    assert ids == det2.object_ids.tolist()[: len(ids)]  # tracked objects keep their ids


def test_realtime_mode_runs_the_detector_every_n_frames(loaded):
    session = _session(loaded, score_threshold=0.0, max_objects=3, detect_every_n_frames=4)
    session.set_text_prompts(["mug"])
    for i, frame in enumerate(_frames(9)):
        session.process_frame(frame, i * FRAME_NS)
    assert session.detector_calls == 3  # frames 0, 4, 8


def test_backbone_shared_with_a_segmenter_of_the_same_frame(loaded):
    cache = VisionFeatureCache(loaded.detector, capacity=2)
    session = TrackerSession(loaded, TrackerConfig(), feature_cache=cache)
    session.add_objects([_point(1)])
    for i, frame in enumerate(_frames(4)):
        session.process_frame(frame, i * FRAME_NS, frame_key=("cam", i))
        cache.get(("cam", i), None)  # the segmenter's request for the same frame is a hit
    assert cache.backbone_calls == 4


def test_realtime_mode_reuses_backbone_features(loaded):
    cache = VisionFeatureCache(loaded.detector, capacity=2)
    session = TrackerSession(loaded, TrackerConfig(reuse_backbone_frames=2), feature_cache=cache)
    session.add_objects([_point(1)])
    for i, frame in enumerate(_frames(6)):
        det = session.process_frame(frame, i * FRAME_NS, frame_key=("cam", i))
        assert det.object_ids.tolist() == [1]
    assert cache.backbone_calls == 2  # frames 0 and 3; the others reuse them (M = 2)


@pytest.mark.parametrize(
    ("stamps", "reason"),
    [([0, FRAME_NS, 0], "backwards"), ([0, FRAME_NS, 5 * 10**9], "exceeds max_time_gap_s")])
def test_time_jumps_reset_the_stream(loaded, stamps, reason):
    session = _session(loaded)
    session.add_objects([_point(1)])
    frames = _frames(3)
    for frame, stamp in zip(frames[:2], stamps[:2], strict=True):
        session.process_frame(frame, stamp)
    assert session.last_reset_reason is None
    det = session.process_frame(frames[2], stamps[2])
    assert reason in session.last_reset_reason
    assert len(det) == 0 and session.object_ids == []


def test_memory_stays_bounded(loaded):
    session = _session(loaded, memory_frames=5)
    session.add_objects([_point(1), _point(2, 80, 60), _point(3, 20, 70)])
    frames = _frames(4)
    sizes = []
    for i in range(60):
        session.process_frame(frames[i % 4], i * FRAME_NS)
        sizes.append(session.memory_stats())
    late = sizes[20:]
    for key in ("frames_held", "outputs_held", "inputs_held", "tracked_entries",
                "vision_features_held"):
        assert len({s[key] for s in late}) == 1, f"{key} keeps changing: {[s[key] for s in late]}"
    assert sizes[-1]["max_outputs_per_object"] <= 5 + 4 + 1  # window + held + prompt frame
    assert sizes[-1]["frames_held"] == 1


def test_parity_with_a_direct_transformers_streaming_loop(loaded):
    """Point-prompted tracking equals the same model driven by hand, frame by frame."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoInferenceSession,
    )

    frames = _frames(8)
    points = {4: (40.0, 30.0), 9: (80.0, 60.0)}
    session = _session(loaded)
    session.add_objects([_point(oid, x, y) for oid, (x, y) in points.items()])
    ours = [session.process_frame(f, i * FRAME_NS) for i, f in enumerate(frames)]

    video_model, size = loaded.video_model, loaded.video_model.tracker_model.config.image_size
    direct = Sam3TrackerVideoInferenceSession(inference_device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            pixel_values = loaded.processor(images=frame, return_tensors="pt")["pixel_values"]
            vision = loaded.detector.get_vision_features(pixel_values=pixel_values)
            feats, pos = video_model.get_vision_features_for_tracker(vision)
            direct.cache.cache_vision_features(i, {"vision_feats": feats,
                                                   "vision_pos_embeds": pos})
            if i == 0:
                for oid, (x, y) in points.items():
                    idx = direct.obj_id_to_idx(oid)
                    direct.add_point_inputs(idx, 0, {
                        "point_coords": torch.tensor([[[[x * size / W, y * size / H]]]]),
                        "point_labels": torch.tensor([[[1]]], dtype=torch.int32)})
                direct.obj_with_new_inputs = list(points)
            out = video_model.tracker_model(inference_session=direct, frame=pixel_values[0],
                                            frame_idx=i)
            masks = torch.nn.functional.interpolate(
                out.pred_masks, size=(H, W), mode="bilinear", align_corners=False)[:, 0] > 0
            scores = out.object_score_logits.reshape(-1).sigmoid()
            assert list(out.object_ids) == ours[i].object_ids.tolist()
            np.testing.assert_array_equal(ours[i].scores, scores.numpy())
            visible = (out.object_score_logits.reshape(-1) > 0).numpy()
            np.testing.assert_array_equal(ours[i].masks[visible], masks.numpy()[visible])


@pytest.mark.parametrize(
    ("config", "message"),
    [({"max_objects": 0}, "max_objects must be an integer >= 1"),
     ({"memory_frames": 0}, "memory_frames"),
     ({"detect_every_n_frames": 0}, "detect_every_n_frames"),
     ({"reuse_backbone_frames": -1}, "reuse_backbone_frames"),
     ({"max_time_gap_s": 0.0}, "max_time_gap_s"),
     ({"score_threshold": 2.0}, "score_threshold")])
def test_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        TrackerConfig(**config)


def test_detector_only_checkpoint_is_refused(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="video model"):
        TrackerSession(load_sam3(str(tiny_checkpoint)), TrackerConfig())

"""Tracker session (no ROS): ids, prompts, bounded memory, time jumps, realtime mode, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3_ros.core.detections import Detections
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
    """100 frames, point objects plus text-detected ones: every table stays within its bound."""
    window = 4
    session = _session(loaded, memory_frames=window, score_threshold=0.0, max_objects=3,
                       detect_every_n_frames=10)
    session.set_text_prompts(["mug"])
    session.add_objects([_point(1), _point(2, 80, 60)])
    frames = _frames(4)
    max_cond = loaded.video_model.tracker_model.config.max_cond_frame_num
    late = []
    for i in range(100):
        session.process_frame(frames[i % 4], i * FRAME_NS)
        stats = session.memory_stats()
        assert stats["objects"] <= 3
        assert stats["max_outputs_per_object"] <= window + 1 + max_cond, (i, stats)
        assert stats["tracked_entries"] <= stats["objects"] * (window + 1), (i, stats)
        assert stats["inputs_held"] <= stats["objects"] * max_cond, (i, stats)
        assert stats["frames_held"] == 1 and stats["vision_features_held"] <= 4
        assert stats["stamps_held"] <= 4 and stats["pending_requests"] == 0
        if i >= 20:
            late.append(stats)
    # Steady state: nothing creeps up once the window is full.
    assert max(s["outputs_held"] for s in late) == late[-1]["outputs_held"] or (
        late[-1]["objects"] < max(s["objects"] for s in late))


def _model_xy(x: float, y: float) -> list[float]:
    # Pixels to model-input coordinates, computed in float64 (rounded once to float32 later).
    size = 112  # TINY_IMAGE_SIZE_PX
    return [x * (size / W), y * (size / H)]


def test_parity_with_a_direct_transformers_streaming_loop(loaded, tiny_checkpoint):
    """Point/box tracking equals a hand-written transformers streaming loop, bit for bit.

    The reference uses the same folder the documented way: `Sam3TrackerVideoModel` (its own
    backbone + neck, where the session uses the detector's backbone through the feature cache
    and `Sam3VideoModel.tracker_neck`), `Sam3TrackerVideoProcessor` for the frames, a session
    opened without a video, one `model(frame=...)` per frame, nothing pruned. 24 frames: the
    session prunes state older than its 16-frame window from frame 21 on, which must not
    change a result. Two point objects from frame 0; a box object joins at frame 3.

    Prompts enter the reference with `add_point_inputs` in model coordinates computed in
    float64: the processor's own float32 scaling rounds the last bit differently depending on
    how many objects one call carries (checked separately below to be within 1 ulp).
    """
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

    frames = _frames(24)
    points = {4: (40.0, 30.0), 9: (80.0, 60.0)}
    box_id, box, box_frame = 6, (10.0, 50.0, 60.0, 85.0), 3
    cache = VisionFeatureCache(loaded.detector, capacity=2)
    session = TrackerSession(loaded, TrackerConfig(), feature_cache=cache)
    session.add_objects([_point(oid, x, y) for oid, (x, y) in points.items()])
    ours = []
    for i, frame in enumerate(frames):
        if i == box_frame:
            session.add_objects([ObjectPromptSpec(box_id, box=box)])
        ours.append(session.process_frame(frame, i * FRAME_NS, frame_key=i))
    assert session.memory_stats()["max_outputs_per_object"] < len(frames)  # pruning happened

    processor = Sam3TrackerVideoProcessor.from_pretrained(tiny_checkpoint)
    model = Sam3TrackerVideoModel.from_pretrained(tiny_checkpoint).eval()
    direct = processor.init_video_session(inference_device="cpu", dtype=torch.float32)
    direct.video_height, direct.video_width = H, W

    def prompt(frame_idx: int, oid: int, xy: list[list[float]], labels: list[int]) -> None:
        direct.add_point_inputs(direct.obj_id_to_idx(oid), frame_idx, {
            "point_coords": torch.tensor([[xy]], dtype=torch.float64).float(),
            "point_labels": torch.tensor([[labels]], dtype=torch.int32)})

    with torch.inference_mode():
        for i, frame in enumerate(frames):
            inputs = processor(images=frame, return_tensors="pt")
            if i == 0:
                for oid, (x, y) in points.items():
                    prompt(0, oid, [_model_xy(x, y)], [1])
                direct.obj_with_new_inputs = list(points)
            if i == box_frame:
                prompt(i, box_id, [_model_xy(*box[:2]), _model_xy(*box[2:])], [2, 3])
                direct.obj_with_new_inputs = [box_id]
            out = model(inference_session=direct, frame=inputs["pixel_values"][0])
            masks = processor.post_process_masks(
                [out.pred_masks], original_sizes=[[H, W]], binarize=True)[0][:, 0].numpy()
            logits = out.object_score_logits.reshape(-1)
            # Sigmoid of the whole (N,) vector, as the session does: CPU kernels may round a
            # lone element differently from the same element in a vector (last bit).
            scores = logits.sigmoid().numpy()
            row = {oid: k for k, oid in enumerate(ours[i].object_ids.tolist())}
            assert sorted(out.object_ids) == sorted(row)
            for k, oid in enumerate(out.object_ids):
                got = row[oid]
                assert ours[i].scores[got] == scores[k], (i, oid)
                if logits[k] > 0:  # occluded objects are reported with an empty mask
                    np.testing.assert_array_equal(ours[i].masks[got], masks[k], err_msg=f"{i}")

    # The processor's coordinates for the same prompts: equal to the last bit or 1 ulp apart.
    via_processor = processor.init_video_session(inference_device="cpu", dtype=torch.float32)
    processor.add_inputs_to_inference_session(
        via_processor, frame_idx=0, obj_ids=list(points),
        input_points=[[[list(xy)] for xy in points.values()]],
        input_labels=[[[1] for _ in points]], original_size=(H, W))
    for k, (x, y) in enumerate(points.values()):
        theirs = via_processor.point_inputs_per_obj[k][0]["point_coords"].reshape(2).numpy()
        np.testing.assert_array_max_ulp(theirs, np.float32(_model_xy(x, y)), maxulp=1)


def test_checkpoint_loads_like_a_real_sam3_download(tiny_checkpoint):
    """Every SAM3 class a user loads from facebook/sam3 loads from the tiny folder."""
    import transformers

    for name in ("Sam3Model", "Sam3VideoModel", "Sam3TrackerVideoModel", "Sam3Processor",
                 "Sam3VideoProcessor", "Sam3TrackerVideoProcessor"):
        assert getattr(transformers, name).from_pretrained(tiny_checkpoint) is not None, name


def test_text_objects_lost_too_long_are_dropped_point_objects_stay(loaded):
    # A mask threshold no logit reaches: every object is reported occluded on every frame.
    session = _session(loaded, score_threshold=0.0, max_objects=4, mask_threshold=1e6,
                       detect_every_n_frames=100, max_lost_frames=2)
    session.set_text_prompts(["mug"])
    session.add_objects([_point(50)])
    frames = _frames(5)
    first = session.process_frame(frames[0], 0)
    assert 50 in first.object_ids and len(first) > 1
    assert (first.states == 1).all()
    for i in (1, 2):
        det = session.process_frame(frames[i], i * FRAME_NS)
        assert det.object_ids.tolist() == first.object_ids.tolist()
    det = session.process_frame(frames[3], 3 * FRAME_NS)  # lost for 3 > 2 frames: dropped
    assert det.object_ids.tolist() == [50]


def test_replacing_text_prompts_remaps_and_drops_objects(loaded):
    session = _session(loaded, score_threshold=0.0, max_objects=6, detect_every_n_frames=100)
    session.set_text_prompts(["mug", "bottle"])
    session.add_objects([_point(50)])
    frames = _frames(3)
    first = session.process_frame(frames[0], 0)
    by_label = {label: {int(i) for i, lab in zip(first.object_ids, first.labels, strict=True)
                        if lab == label} for label in ("mug", "bottle", "")}
    assert by_label["mug"] | by_label["bottle"]
    assert session.set_text_prompts(["bottle", "cup"]) == [0, 1]
    det = session.process_frame(frames[1], FRAME_NS)
    assert set(det.object_ids.tolist()) == by_label["bottle"] | {50}
    for oid, class_id, label in zip(det.object_ids, det.class_ids, det.labels, strict=True):
        assert (class_id, label) == ((0, "bottle") if oid != 50 else (-1, ""))


def test_objects_queued_for_the_next_frame_survive_a_time_jump_reset(loaded):
    session = _session(loaded)
    session.add_objects([_point(1)])
    frames = _frames(3)
    session.process_frame(frames[0], 0)
    session.add_objects([_point(2, 80, 60)])
    session.add_objects([_point(1, 30, 30)], refine=True)  # refers to the old stream
    det = session.process_frame(frames[1], 10 * 10**9)
    assert "exceeds" in session.last_reset_reason and session.reset_count == 1
    # The refinement's service call had succeeded: the reason tells what was dropped.
    assert "1 queued request(s) dropped (refine [1])" in session.last_reset_reason
    assert session.requests_dropped_by_reset == 1
    assert det.object_ids.tolist() == [2]
    assert session.add_objects([_point(-1, 20, 20)]) == [3]


def test_requests_from_another_thread_while_frames_stream(loaded):
    """Service threads add/remove objects while frames stream: no frame is corrupted."""
    import threading

    session = _session(loaded, max_objects=8)
    session.add_objects([_point(0)])
    frames = _frames(4)
    errors: list[BaseException] = []
    done = threading.Event()

    def requests() -> None:
        try:
            for k in range(1, 15):
                session.add_objects([_point(k, 10 + 5 * k, 40)])
                if k > 2:
                    session.remove_objects([k - 2])
                session.memory_stats()
        except BaseException as err:  # reported by the main thread
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=requests)
    thread.start()
    i = 0
    while not done.is_set() or i < 3:
        det = session.process_frame(frames[i % 4], i * FRAME_NS)
        assert 0 in det.object_ids and len(det) <= 8
        i += 1
    thread.join()
    assert not errors
    det = session.process_frame(frames[i % 4], i * FRAME_NS)
    assert det.object_ids.tolist() == [0, 13, 14]


@pytest.mark.parametrize(
    ("config", "message"),
    [({"max_objects": 0}, "max_objects must be an integer >= 1"),
     ({"memory_frames": -1}, "memory_frames"),
     ({"max_lost_frames": -1}, "max_lost_frames"),
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


@pytest.mark.parametrize("held_frame", [False, True])
def test_a_failed_frame_resets_the_stream_and_the_next_frames_work(loaded, monkeypatch,
                                                                   held_frame):
    # The frame's requests were applied and the model's session half updated when it failed:
    # every later frame failed too (missing memory features) until a manual reset.
    session = _session(loaded)
    session.add_objects([_point(1)])
    frames = _frames(5)
    session.process_frame(frames[0], 0)
    session.add_objects([_point(2, 80, 60)], frame_stamp_ns=0 if held_frame else None)
    track = session._track

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(session, "_track", track)
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(session, "_track", fail_once)
    with pytest.raises(RuntimeError, match="injected"):
        session.process_frame(frames[1], FRAME_NS)
    # The request the frame had taken is named and counted (it was neither): its service
    # call had succeeded.
    assert session.last_reset_reason == (
        "a frame failed (RuntimeError: CUDA out of memory (injected)); 1 queued request(s) "
        "dropped (add [2]): send them again")
    assert session.requests_dropped_by_reset == 1
    assert session.object_ids == [] and session.memory_stats()["pending_requests"] == 0
    assert session.process_frame(frames[2], 2 * FRAME_NS).object_ids.tolist() == []
    session.add_objects([_point(3)])
    for i in (3, 4):
        assert session.process_frame(frames[i], i * FRAME_NS).object_ids.tolist() == [3]


def test_max_objects_counts_queued_additions(loaded):
    session = _session(loaded, max_objects=8)
    session.add_objects([_point(i, 10.0 + i) for i in range(5)])
    with pytest.raises(ConfigError, match=r"below the 5 objects tracked now .queued"):
        session.set_config(TrackerConfig(max_objects=4))
    session.set_config(TrackerConfig(max_objects=5))
    session.process_frame(_frames(1)[0], 0)
    session.remove_objects([0, 1, 2, 3, 4])  # within the new max_objects
    assert session.config.max_objects == 5


def test_a_refused_update_changes_nothing(loaded):
    session = _session(loaded, score_threshold=0.5)
    session.set_text_prompts(["mug"])
    generation = session.prompt_generation
    with pytest.raises(InvalidPromptError):
        session.update(TrackerConfig(score_threshold=0.95), ["x" * 250])
    assert session.config.score_threshold == 0.5 and session.text_prompts == ("mug",)
    session.add_objects([_point(1), _point(2, 80, 60)])
    with pytest.raises(ConfigError, match="below the 2 objects"):
        session.update(TrackerConfig(max_objects=1), ["cup"])
    assert session.text_prompts == ("mug",) and session.prompt_generation == generation
    session.update(TrackerConfig(score_threshold=0.95), ["cup"])
    assert session.config.score_threshold == 0.95 and session.text_prompts == ("cup",)


def _pairwise_iou(masks: np.ndarray) -> np.ndarray:
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    inter = flat @ flat.T
    area = flat.sum(axis=1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1)
    np.fill_diagonal(iou, 0.0)
    return iou


def test_one_instance_found_twice_on_a_frame_starts_one_object(loaded):
    # Each detection is compared with those accepted before it on the same frame, not only
    # with the previous frame's objects: at score 0 the random model gives many overlapping
    # queries, which all started objects (16, 59 pairs above new_object_iou).
    session = _session(loaded, score_threshold=0.0, max_objects=16)
    session.set_text_prompts(["mug", "cup"])
    det = session.process_frame(_frames(1)[0], 0)
    assert 0 < len(det) < 16
    assert _pairwise_iou(det.masks).max() <= session.config.new_object_iou + 0.05


def test_prompts_changed_and_changed_back_before_a_frame_keep_their_objects(loaded):
    session = _session(loaded, score_threshold=0.0, max_objects=6, detect_every_n_frames=100)
    session.set_text_prompts(["mug"])
    frames = _frames(3)
    first = session.process_frame(frames[0], 0).object_ids.tolist()
    assert first
    session.set_text_prompts(["cup"])
    session.set_text_prompts(["mug"])
    assert session.process_frame(frames[1], FRAME_NS).object_ids.tolist() == first


def test_an_id_freed_and_reused_before_a_prompt_change_keeps_the_new_object(loaded):
    session = _session(loaded, score_threshold=0.0, max_objects=6, detect_every_n_frames=100)
    session.set_text_prompts(["mug"])
    frames = _frames(3)
    first = session.process_frame(frames[0], 0).object_ids.tolist()
    reused = first[0]
    session.remove_objects([reused])
    assert session.add_objects([_point(reused, label="mine")]) == [reused]
    session.set_text_prompts(["cup"])  # the detected "mug" objects leave; "mine" stays
    det = session.process_frame(frames[1], FRAME_NS)
    assert det.object_ids.tolist() == [reused] and list(det.labels) == ["mine"]


def test_ids_keep_counting_up_across_automatic_resets(loaded):
    # Nobody asked for a reset on a time jump: a consumer keying state by id must not see
    # an old id on a new object. A reset the caller asks for starts again at 0.
    session = _session(loaded)
    frames = _frames(4)
    assert session.add_objects([_point(-1, label="first")]) == [0]
    session.process_frame(frames[0], 0)
    session.process_frame(frames[1], 10 * 10**9)  # a 10 s gap: automatic reset
    assert session.reset_count == 1
    assert session.add_objects([_point(-1, label="second")]) == [1]
    session.reset()
    assert session.add_objects([_point(-1)]) == [0]


def test_coordinates_given_as_strings_are_stored_as_numbers(loaded):
    # The checks read float("40"); the stored request kept the string and failed the next
    # frame, which reset the stream.
    session = _session(loaded)
    frames = _frames(2)
    session.add_objects([_point(1)])
    session.process_frame(frames[0], 0)
    assert session.add_objects([ObjectPromptSpec(2, "", (("40", "30", True),))]) == [2]
    assert session.process_frame(frames[1], FRAME_NS).object_ids.tolist() == [1, 2]
    assert session.reset_count == 0


@pytest.mark.parametrize("seed", range(6))
def test_overlaps_counted_within_boxes_equal_whole_frame_iou(seed):
    from sam3_ros.core.tracker import MaskExtent

    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 60, 80), bool)
    for mask in masks[:4]:  # the fifth stays empty
        y, x = rng.integers(0, 50), rng.integers(0, 70)
        mask[y:y + rng.integers(1, 30), x:x + rng.integers(1, 40)] = True
        mask &= rng.random(mask.shape) < 0.8  # ragged, with holes
    extents = [MaskExtent.of(m) for m in masks]
    for a in range(5):
        for b in range(5):
            inter = np.count_nonzero(masks[a] & masks[b])
            union = np.count_nonzero(masks[a] | masks[b])
            expected = inter / union if inter else 0.0
            assert extents[a].iou(extents[b], masks[a], masks[b]) == pytest.approx(expected)


def test_a_new_phrase_is_detected_where_a_dropped_phrase_was_on_the_same_frame(loaded,
                                                                                monkeypatch):
    # The dropped phrase's objects leave at the start of the frame; their masks of the
    # previous frame hid the new phrase's detections at the same place for one frame.
    session = _session(loaded, score_threshold=0.0, max_objects=6)
    session.set_text_prompts(["mug"])
    frames = _frames(2)
    first = session.process_frame(frames[0], 0)
    assert len(first) > 0
    session.set_text_prompts(["cup"])
    # The detector finds "cup" exactly where the mug objects were.
    same_place = Detections(xyxy=first.xyxy, scores=np.full(len(first), 0.9, np.float32),
                            class_ids=np.zeros(len(first), np.int32),
                            image_height_px=first.image_height_px,
                            image_width_px=first.image_width_px, masks=first.masks,
                            labels=("cup",) * len(first))
    monkeypatch.setattr(session._segmenter, "segment_features", lambda *a, **k: same_place)
    det = session.process_frame(frames[1], FRAME_NS)
    assert len(det) > 0 and set(det.labels) == {"cup"}
    assert not set(det.object_ids.tolist()) & set(first.object_ids.tolist())


def test_bfloat16_on_cpu_tracks_points_and_text(tiny_checkpoint):
    # `dtype: bfloat16` is the fastest torch setting on CPUs with AMX (README): the tracker
    # must run in it, points and text prompts alike.
    loaded = load_sam3(str(tiny_checkpoint), dtype="bfloat16", with_tracker=True)
    session = TrackerSession(loaded, TrackerConfig(score_threshold=0.0, max_objects=4))
    session.set_text_prompts(["mug"])
    assert session.add_objects([_point(3)]) == [3]
    for i, frame in enumerate(_frames(3)):
        det = session.process_frame(frame, i * FRAME_NS)
        assert 3 in det.object_ids.tolist() and len(det) <= 4
        assert det.scores.dtype == np.float32 and det.masks.shape[1:] == (H, W)


@pytest.mark.parametrize("prompt", [_point(-1, 1e6, 10),
                                    ObjectPromptSpec(-1, box=(-500, -500, -400, -400))])
def test_prompts_after_a_reset_are_still_checked_against_the_image_size(loaded, prompt):
    # Before the fix a reset forgot the size: the prompt was accepted, clipped to a corner
    # (or to an empty box) and tracked a phantom object for ever.
    session = _session(loaded)
    session.process_frame(_frames(1)[0], 0)
    session.reset()
    with pytest.raises(InvalidPromptError, match="outside"):
        session.add_objects([prompt])


def test_a_new_image_size_right_after_a_manual_reset_is_no_automatic_reset(loaded):
    # The size is kept for prompt checks after a reset; with nothing queued a camera that
    # changed its resolution meanwhile has nothing to reset (no warning, no count).
    session = _session(loaded)
    session.process_frame(_frames(1)[0], 0)
    session.reset()
    smaller = np.zeros((H // 2, W // 2, 3), np.uint8)
    session.process_frame(smaller, FRAME_NS)
    assert session.reset_count == 0 and session.last_reset_reason is None
    session.add_objects([_point(-1, 10, 10)])  # checked against the new size
    with pytest.raises(InvalidPromptError, match="outside"):
        session.add_objects([_point(-1, W - 1, 10)])
    session.process_frame(np.zeros((H, W, 3), np.uint8), 2 * FRAME_NS)  # a frame in: counts
    assert session.reset_count == 1 and "image size changed" in session.last_reset_reason

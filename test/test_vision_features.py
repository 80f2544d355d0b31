"""The shared vision-feature cache: frame keys, one pass per image, memory held per camera."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import pytest
import torch

from sam3_ros.core.vision_features import FrameKey, VisionFeatureCache, frame_key


@dataclass
class Features:
    """Shaped like `Sam3VisionEncoderOutput` for `select_frame`."""

    last_hidden_state: torch.Tensor
    fpn_hidden_states: tuple[torch.Tensor, ...]
    fpn_position_encoding: tuple[torch.Tensor, ...]


class Backbone:
    """Encodes a frame as its own pixels; records, at every pass, which earlier outputs live."""

    def __init__(self) -> None:
        self.passes: list[list[float]] = []
        self.alive_at_pass: list[int] = []
        self._outputs: list[weakref.ref] = []

    def __call__(self, pixel_values: torch.Tensor) -> Features:
        gc.collect()
        self.alive_at_pass.append(sum(ref() is not None for ref in self._outputs))
        self.passes.append(pixel_values[:, 0, 0, 0].tolist())
        hidden = pixel_values.clone()
        self._outputs.append(weakref.ref(hidden))
        return Features(hidden, (hidden * 2,), (hidden * 0,))


def _pixels(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2)


def _value(features: Features) -> float:
    return float(features.last_hidden_state[0, 0, 0, 0])


def _key(source: str, sec: int, frame_id: str = "cam") -> FrameKey:
    key = frame_key(source, sec, 0, frame_id)
    assert key is not None
    return key


@pytest.mark.parametrize(("args", "expected"), [
    (("/front/image", 0, 0, "front"), None),  # a publisher that never sets the stamp
    (("/front/image", 0, 0, ""), None),
    (("/front/image", 0, 1, "front"), FrameKey("/front/image", 0, 1, "front")),
    (("/front/image", 12, 0, ""), FrameKey("/front/image", 12, 0, "")),
    (("/front/image", 2**31 - 1, 999_999_999, "f"),
     FrameKey("/front/image", 2**31 - 1, 999_999_999, "f")),
])
def test_frame_key(args, expected):
    assert frame_key(*args) == expected


def test_two_topics_with_equal_stamps_and_frame_ids_never_share():
    # image_raw and image_rect of one camera carry the same header.
    assert frame_key("/cam/image_raw", 5, 7, "cam") != frame_key("/cam/image_rect", 5, 7, "cam")
    cache = VisionFeatureCache(Backbone(), capacity=4)
    raw = cache.get(_key("/cam/image_raw", 5), _pixels(1.0))
    rect = cache.get(_key("/cam/image_rect", 5), _pixels(2.0))
    assert (_value(raw), _value(rect)) == (1.0, 2.0)


def test_same_key_is_one_pass():
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=4)
    key = _key("/a", 1)
    first = cache.get(key, _pixels(1.0))
    assert cache.get(key, _pixels(99.0)) is first  # the second consumer of the same image
    assert backbone.passes == [[1.0]]
    assert cache.backbone_calls == 1


def test_uncached_calls_are_never_stored():
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=4)
    assert _value(cache.get(None, _pixels(1.0))) == 1.0
    assert _value(cache.get(None, _pixels(2.0))) == 2.0
    assert backbone.passes == [[1.0], [2.0]]


def test_one_camera_holds_one_frame_even_at_the_pass():
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=4)
    for sec in range(1, 6):
        assert _value(cache.get(_key("/a", sec), _pixels(float(sec)))) == sec
    # At each pass no earlier frame of the camera is held any more (the test drops its own).
    assert backbone.alive_at_pass == [0, 0, 0, 0, 0]
    assert not cache.contains(_key("/a", 4))
    assert cache.contains(_key("/a", 5))


def test_several_cameras_keep_their_latest_frame_each():
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=4)
    cameras = ["/a", "/b", "/c"]
    for sec in (1, 2):
        keys = [_key(c, sec) for c in cameras]
        cache.compute_batch(keys, _pixels(*(10.0 * i + sec for i in range(3))))
    # The first batch was released before the second ran; each camera's latest frame stays.
    assert backbone.alive_at_pass == [0, 0]
    for i, camera in enumerate(cameras):
        assert not cache.contains(_key(camera, 1))
        assert _value(cache.get(_key(camera, 2), _pixels(-1.0))) == 10.0 * i + 2
    assert cache.backbone_calls == 2


def test_a_batch_with_two_frames_of_one_camera_keeps_both():
    # A segmenter and a tracker stream of one topic may take different frames in one cycle.
    cache = VisionFeatureCache(Backbone(), capacity=4)
    older, newer = _key("/a", 1), _key("/a", 2)
    cache.compute_batch([older, newer], _pixels(1.0, 2.0))
    assert _value(cache.get(older, _pixels(-1.0))) == 1.0
    assert _value(cache.get(newer, _pixels(-1.0))) == 2.0
    assert cache.backbone_calls == 1


def test_stamps_going_back_are_still_cached():
    # After a bag loop the newest frame carries the oldest stamp: "latest", not "newest stamp".
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=4)
    cache.get(_key("/a", 100), _pixels(100.0))
    cache.compute_batch([_key("/a", 1)], _pixels(1.0))
    assert _value(cache.get(_key("/a", 1), _pixels(-1.0))) == 1.0
    assert backbone.passes == [[100.0], [1.0]]


def test_a_late_consumer_of_a_replaced_frame_gets_its_own_frame():
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=4)
    cache.get(_key("/a", 1), _pixels(1.0))
    cache.get(_key("/a", 2), _pixels(2.0))
    # Frame 1's features were released; asking again recomputes them (one extra pass).
    assert _value(cache.get(_key("/a", 1), _pixels(1.0))) == 1.0
    assert _value(cache.get(_key("/a", 2), _pixels(2.0))) == 2.0
    assert backbone.passes == [[1.0], [2.0], [1.0], [2.0]]


def test_other_keys_keep_the_capacity_rule():
    # Core callers key frames as they like (ints, tuples): newest `capacity` kept.
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=2)
    for i in range(3):
        cache.get(("cam", i), _pixels(float(i)))
    assert not cache.contains(("cam", 0))
    assert cache.contains(("cam", 1)) and cache.contains(("cam", 2))


@pytest.mark.parametrize(("keys", "batch", "message"), [
    ([_key("/a", 1)], 2, r"expected 1 frames \(one per key\), got a batch of 2"),
    ([_key(c, 1) for c in "abc"], 3, "3 frames, but the cache holds 2"),
])
def test_compute_batch_refusals(keys, batch, message):
    cache = VisionFeatureCache(Backbone(), capacity=2)
    with pytest.raises(ValueError, match=message):
        cache.compute_batch(keys, _pixels(*range(batch)))


def test_frames_of_a_batch_own_their_memory_and_share_positions():
    from sam3_ros.core.backbone import split_frames

    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    batch = Features(hidden, (hidden * 2,), (torch.ones(2, 3, 4),))
    frames = split_frames(batch)
    assert [f.last_hidden_state.tolist() for f in frames] == [hidden[:1].tolist(),
                                                              hidden[1:].tolist()]
    assert all(f.last_hidden_state.untyped_storage().nbytes() == 3 * 4 * 4 for f in frames)
    assert frames[0].fpn_position_encoding is frames[1].fpn_position_encoding
    # An earlier batch's positions are reused when they fit, replaced when they do not.
    again = split_frames(batch, frames[0].fpn_position_encoding)
    assert again[1].fpn_position_encoding is frames[0].fpn_position_encoding
    other = Features(hidden, (hidden,), (torch.ones(2, 5, 4),))
    assert split_frames(other, frames[0].fpn_position_encoding)[0].fpn_position_encoding[
        0].shape == (1, 5, 4)
    single = Features(hidden[:1], (hidden[:1],), (torch.ones(1, 3, 4),))
    assert split_frames(single) == [single]


def test_positions_that_are_one_frame_expanded_are_shared_without_a_copy():
    from sam3_ros.core.backbone import split_frames

    hidden = torch.zeros(2, 3, 4)
    one = torch.ones(1, 3, 4)
    frames = split_frames(Features(hidden, (hidden,), (one.expand(2, -1, -1),)))
    assert frames[0].fpn_position_encoding[0].data_ptr() == one.data_ptr()
    assert frames[0].fpn_position_encoding[0].shape == (1, 3, 4)


@pytest.mark.parametrize("inference", [True, False])
def test_frames_of_a_batch_look_like_a_batch_of_one_pass(inference):
    """Same tensor kind (inference or not) and the strides a batch-of-one pass gives, the
    size-1 batch dimension's included, also for channels-last positions expanded from one
    frame: compiled heads guard on both (test_compile_heads.py checks the compile itself)."""
    from sam3_ros.core.backbone import split_frames

    with torch.inference_mode(inference):
        hidden = torch.randn(2, 3, 4)
        one = torch.randn(1, 6, 5, 4).to(memory_format=torch.channels_last)
        fresh = torch.randn(1, 6, 5, 4).to(memory_format=torch.channels_last)
    frames = split_frames(Features(hidden, (hidden,), (one.expand(2, -1, -1, -1),)))
    position = frames[1].fpn_position_encoding[0]
    assert position.data_ptr() == one.data_ptr()  # still a view
    assert position.stride() == fresh.stride() == (120, 1, 24, 6)
    for tensor in (position, frames[1].last_hidden_state, frames[0].fpn_hidden_states[0]):
        assert tensor.is_inference() == inference


def test_a_camera_in_a_later_batch_does_not_pin_the_earlier_batch():
    backbone = Backbone()
    cache = VisionFeatureCache(backbone, capacity=4)
    cache.compute_batch([_key("/a", 1), _key("/b", 1)], _pixels(1.0, 2.0))
    cache.compute_batch([_key("/b", 2)], _pixels(3.0))  # /a's frame 1 is still its latest
    cache.compute_batch([_key("/b", 3)], _pixels(4.0))
    # /a's frame is a copy: the first batch's output was freed at once (a view of it would
    # have kept both frames alive through the later passes: [0, 1, 1]).
    assert backbone.alive_at_pass == [0, 0, 0]
    assert _value(cache.get(_key("/a", 1), _pixels(-1.0))) == 1.0


@pytest.mark.parametrize(("last_read", "released"), [
    # A camera nobody reads any more (its readers left while its frame was cached): its
    # frames go (they were kept until capacity eviction, which might never come).
    ([], [("/a", 1), ("/a", 2), ("/b", 9)]),
    ([("/a", 2)], [("/a", 1), ("/a", 2), ("/b", 9)]),  # the one reader of /a read both
    ([("/a", 1)], [("/a", 1), ("/b", 9)]),  # ... only the first: frame 2 stays
    ([("/a", 2), ("/a", 1)], [("/a", 1), ("/b", 9)]),  # a second reader is behind frame 2
    ([("/a", 3), ("/b", 7)], [("/a", 1), ("/a", 2)]),  # /b's frame 9 is ahead of its reader
    ([("/c", 50)], [("/a", 1), ("/a", 2), ("/b", 9)]),  # nobody reads /a or /b
    ([("/a", 2), ("/a", None)], [("/b", 9)]),  # a declared reader of /a that read nothing yet
    # An undeclared reader that has read nothing may read any camera: nobody's frames go.
    ([("/b", 9), (None, None)], [("/b", 9)]),
])
def test_release_read_drops_what_every_reader_of_the_camera_read(last_read, released):
    cache = VisionFeatureCache(Backbone(), capacity=8)
    frames = [("/a", 1), ("/a", 2), ("/b", 9)]
    cache.get(_key("/a", 1), _pixels(1.0))
    # /a's frame 1 kept beside its frame 2: another stream of /a reads it in this cycle.
    cache.pin([_key("/a", 1)])
    cache.compute_batch([_key("/a", 2), _key("/b", 9)], _pixels(2.0, 9.0))
    cache.get(("not", "a", "frame key"), _pixels(0.0))
    cache.release_read([(source, None if sec is None else _key(source, sec))
                        for source, sec in last_read])
    assert [f for f in frames if not cache.contains(_key(*f))] == released
    assert cache.contains(("not", "a", "frame key"))  # no stamp to compare: kept


def test_pinned_frames_survive_newer_frames_and_the_capacity_until_released():
    cache = VisionFeatureCache(Backbone(), capacity=2)
    cache.compute_batch([_key("/a", 1), _key("/b", 1)], _pixels(1.0, 2.0))
    cache.pin([_key("/a", 1), _key("/a", 2)])
    cache.compute_batch([_key("/a", 2)], _pixels(3.0))  # /b's frame is evicted, not /a's 1
    assert [cache.contains(_key(*k)) for k in [("/a", 1), ("/a", 2), ("/b", 1)]] == [
        True, True, False]
    cache.release_read([("/a", _key("/a", 1))])  # unpins; /a's reader is behind frame 2
    cache.compute_batch([_key("/a", 3)], _pixels(4.0))  # so frame 3's pass keeps it
    assert [cache.contains(_key(*k)) for k in [("/a", 1), ("/a", 2), ("/a", 3)]] == [
        False, True, True]
    cache.release_read([("/a", _key("/a", 3))])
    assert not cache.contains(_key("/a", 2)) and not cache.contains(_key("/a", 3))
    cache.get(_key("/a", 4), _pixels(5.0))
    cache.get(_key("/a", 5), _pixels(6.0))  # no reader awaits frame 4: dropped by the pass
    assert not cache.contains(_key("/a", 4)) and cache.contains(_key("/a", 5))


def test_a_frame_awaited_by_a_reader_that_never_reads_it_survives_one_newer_pass():
    cache = VisionFeatureCache(Backbone(), capacity=8)
    behind = [("/a", _key("/a", 1))]  # a reader stuck at frame 1 (e.g. after a bag loop)
    cache.get(_key("/a", 2), _pixels(2.0))
    cache.release_read(behind)
    for sec in (3, 4, 5):
        cache.get(_key("/a", sec), _pixels(float(sec)))
        cache.release_read(behind)
    assert [sec for sec in range(2, 6) if cache.contains(_key("/a", sec))] == [4, 5]

"""The runtime's scheduler: latest frame per stream, batching, fairness, isolation (no ROS)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import torch

from sam3_ros.core.runtime import PreparedFrame, Runtime
from sam3_ros.core.vision_features import FrameKey, VisionFeatureCache


class FakeCache:
    """A feature cache whose 'backbone' records every batch it encoded."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self.entries: dict = {}
        self.batches: list[list] = []
        self.fail_next = False

    def contains(self, key) -> bool:
        return key in self.entries

    def compute_batch(self, keys, pixel_values, keep=()) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("backbone exploded")
        assert pixel_values.shape[0] == len(keys)
        self.batches.append(list(keys))
        for i, key in enumerate(keys):
            self.entries[key] = pixel_values[i:i + 1].clone()

    def pin(self, keys) -> None:
        pass

    def release_read(self, readers) -> None:
        pass  # keeps everything: these tests count passes, not memory

    def get(self, key, pixel_values):
        if key not in self.entries:
            self.batches.append([key])
            self.entries[key] = pixel_values
        return self.entries[key]


class Handler:
    """A stream owner that records what it was given; frames are ints (their value = pixel)."""

    def __init__(self, name: str, cache: FakeCache, *, shared_camera: str | None = None,
                 process_s: float = 0.0, fail_on: set[int] | None = None,
                 fail_stage: str = "process") -> None:
        self.name = name
        self.cache = cache
        self.camera = shared_camera or name
        self.process_s = process_s
        self.fail_on = fail_on or set()
        self.fail_stage = fail_stage
        self.delivered: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self.processing = threading.Event()

    def key(self, value: int):
        return (self.camera, value)

    def _maybe_fail(self, stage: str, value: int) -> None:
        if value in self.fail_on and stage == self.fail_stage:
            raise ValueError(f"{self.name}: bad frame {value}")

    def prepare(self, item: int) -> PreparedFrame:
        self._maybe_fail("prepare", item)

        def preprocess(rgb: int) -> torch.Tensor:
            self._maybe_fail("preprocess", rgb)
            return torch.full((1, 3, 2, 2), float(rgb))

        return PreparedFrame(rgb=item, key=self.key(item), feature_cache=self.cache,
                             preprocess=preprocess, context=item)

    def process(self, frame: PreparedFrame) -> float:
        self.processing.set()
        self._maybe_fail("process", frame.context)
        if self.process_s:
            time.sleep(self.process_s)
        features = self.cache.get(frame.key, frame.pixel_values)
        return float(features.flatten()[0])

    def deliver(self, frame: PreparedFrame, result: float, latency_s: float) -> None:
        assert result == frame.context  # this stream's own frame, never another camera's
        self.delivered.append((frame.context, latency_s))

    def failed(self, error: Exception) -> None:
        self.errors.append(str(error))


def _submit_in_one_cycle(runtime: Runtime, streams, handlers, value: int) -> None:
    """Each stream gets frame `value` while the compute thread is held: one cycle takes all."""
    gate = Gate(runtime)
    for stream, handler in zip(streams, handlers, strict=True):
        stream.submit(value, handler.key(value))
    gate.open()


def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.002)


class Gate:
    """Holds the compute thread in a call so frames can be lined up deterministically."""

    def __init__(self, runtime: Runtime) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

        def hold() -> None:
            self.entered.set()
            self.release.wait(5)

        self.thread = threading.Thread(target=runtime.call, args=(hold,))
        self.thread.start()
        assert self.entered.wait(5)

    def open(self) -> None:
        self.release.set()
        self.thread.join()


@pytest.fixture
def runtime():
    return Runtime(max_batch=4, name="test_runtime")


def test_latest_frame_per_stream_replaces_waiting_frames(runtime):
    cache = FakeCache()
    handler = Handler("a", cache)
    stream = runtime.add_stream("a", handler)
    gate = Gate(runtime)
    for value in (1, 2, 3):
        stream.submit(value, handler.key(value))
    gate.open()
    _wait(lambda: stream.stats.processed == 1)
    assert [v for v, _ in handler.delivered] == [3]
    assert stream.stats.as_dict()["received"] == 3
    assert stream.stats.dropped == 2


def test_one_batched_backbone_pass_for_all_waiting_cameras(runtime):
    cache = FakeCache()
    handlers = [Handler(name, cache) for name in ("a", "b", "c")]
    streams = [runtime.add_stream(h.name, h) for h in handlers]
    gate = Gate(runtime)
    for value, (stream, handler) in enumerate(zip(streams, handlers, strict=True), start=10):
        stream.submit(value, handler.key(value))
    gate.open()
    _wait(lambda: all(s.stats.processed == 1 for s in streams))
    assert cache.batches == [[("a", 10), ("b", 11), ("c", 12)]]
    assert [h.delivered[0][0] for h in handlers] == [10, 11, 12]  # no crossed streams
    stats = runtime.stats.as_dict()
    assert stats["backbone_passes"] == 1 and stats["largest_batch"] == 3


def test_two_consumers_of_one_image_cost_one_backbone_pass(runtime):
    cache = FakeCache()
    segmenter = Handler("segmenter", cache, shared_camera="front")
    tracker = Handler("tracker", cache, shared_camera="front")
    s1, s2 = runtime.add_stream("s", segmenter), runtime.add_stream("t", tracker)
    gate = Gate(runtime)
    s1.submit(5, ("front", 5))
    s2.submit(5, ("front", 5))
    gate.open()
    _wait(lambda: s1.stats.processed == 1 and s2.stats.processed == 1)
    assert cache.batches == [[("front", 5)]]
    assert runtime.stats.frames_encoded == 1


@pytest.mark.parametrize("max_batch", [1, 2, 3])
def test_more_cameras_than_max_batch_are_served_round_robin(max_batch):
    runtime = Runtime(max_batch=max_batch, name="test_rr")
    cache = FakeCache()
    handlers = [Handler(f"cam{i}", cache) for i in range(5)]
    streams = [runtime.add_stream(h.name, h) for h in handlers]
    _submit_in_one_cycle(runtime, streams, handlers, 1)
    _wait(lambda: all(s.stats.processed == 1 for s in streams))
    assert all(len(batch) <= max_batch for batch in cache.batches)
    # Every camera served once, in round-robin order, before any is served twice.
    order = [key[0] for batch in cache.batches for key in batch]
    assert order == [h.name for h in handlers]


def test_a_fast_camera_cannot_starve_a_slow_one():
    runtime = Runtime(max_batch=1, name="test_fair")
    cache = FakeCache(capacity=1)
    fast = Handler("fast", cache, process_s=0.005)
    slow = Handler("slow", cache, process_s=0.005)
    fast_stream, slow_stream = runtime.add_stream("fast", fast), runtime.add_stream("slow", slow)
    stop = threading.Event()

    def flood() -> None:  # submits far faster than the runtime serves
        value = 0
        while not stop.is_set():
            value += 1
            fast_stream.submit(value, fast.key(value))
            time.sleep(0.0005)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        for value in range(1, 11):
            slow_stream.submit(value, slow.key(value))
            _wait(lambda v=value: slow_stream.stats.processed == v, timeout_s=2.0)
    finally:
        stop.set()
        flooder.join()
    assert [v for v, _ in slow.delivered] == list(range(1, 11))
    assert slow_stream.stats.dropped == 0
    assert fast_stream.stats.dropped > 0  # latest-frame: the flood is dropped, not queued


def test_equal_input_rates_give_equal_processed_rates():
    runtime = Runtime(max_batch=2, name="test_equal")
    cache = FakeCache()
    handlers = [Handler(f"cam{i}", cache, process_s=0.004) for i in range(4)]
    streams = [runtime.add_stream(h.name, h) for h in handlers]
    for value in range(1, 61):  # all cameras at the same rate, faster than the runtime
        for stream, handler in zip(streams, handlers, strict=True):
            stream.submit(value, handler.key(value))
        time.sleep(0.004)
    _wait(lambda: not any(s._has_item for s in streams))
    processed = [s.stats.processed for s in streams]
    assert max(processed) - min(processed) <= max(1, 0.1 * max(processed)), processed


@pytest.mark.parametrize("stage", ["prepare", "preprocess", "process"])
def test_an_error_in_one_stream_does_not_affect_the_others(runtime, stage):
    cache = FakeCache()
    bad = Handler("bad", cache, fail_on={7}, fail_stage=stage)
    good = Handler("good", cache)
    bad_stream, good_stream = runtime.add_stream("bad", bad), runtime.add_stream("good", good)
    gate = Gate(runtime)
    bad_stream.submit(7, bad.key(7))
    good_stream.submit(8, good.key(8))
    gate.open()
    _wait(lambda: good_stream.stats.processed == 1 and bad_stream.stats.errors == 1)
    assert good.delivered[0][0] == 8 and not good.errors
    assert bad.errors == ["bad: bad frame 7"] and not bad.delivered
    bad_stream.submit(9, bad.key(9))  # the failing stream keeps running
    _wait(lambda: bad_stream.stats.processed == 1)


def test_a_failed_batched_pass_falls_back_to_each_streams_own_call(runtime):
    cache = FakeCache()
    cache.fail_next = True
    handlers = [Handler(name, cache) for name in ("a", "b")]
    streams = [runtime.add_stream(h.name, h) for h in handlers]
    _submit_in_one_cycle(runtime, streams, handlers, 3)
    _wait(lambda: all(s.stats.processed == 1 for s in streams))
    assert "backbone exploded" in runtime.last_batch_error
    assert cache.batches == [[("a", 3)], [("b", 3)]]


def test_a_stream_leaving_mid_cycle_gets_nothing_after_removal(runtime):
    cache = FakeCache()
    slow = Handler("slow", cache, process_s=0.2)
    leaving = Handler("leaving", cache)
    slow_stream = runtime.add_stream("slow", slow)
    leaving_stream = runtime.add_stream("leaving", leaving)
    gate = Gate(runtime)
    slow_stream.submit(1, slow.key(1))
    leaving_stream.submit(2, leaving.key(2))
    gate.open()
    assert slow.processing.wait(5)
    runtime.remove_stream(leaving_stream)  # waits for the cycle that holds it
    delivered_at_removal = list(leaving.delivered)
    _wait(lambda: slow_stream.stats.processed == 1)
    time.sleep(0.05)
    assert leaving.delivered == delivered_at_removal == []
    leaving_stream.submit(3, leaving.key(3))  # ignored: the stream is gone
    time.sleep(0.05)
    assert leaving.delivered == [] and leaving_stream.stats.received == 1
    assert runtime.streams() == [slow_stream]


class _Escaping(BaseException):
    """Not an Exception: passes every `except Exception` of the cycle."""


def test_nothing_escaping_a_cycle_ends_the_compute_thread(runtime):
    # It ended the thread for good: every later call (configure, set_prompts, parameters)
    # then waited forever.
    cache = FakeCache()
    handler = Handler("cam", cache)
    stream = runtime.add_stream("cam", handler)

    def escaping_prepare(item):
        handler.prepare = Handler.prepare.__get__(handler)
        raise _Escaping("from a handler")

    handler.prepare = escaping_prepare
    stream.submit(1, handler.key(1))
    _wait(lambda: "runtime loop: _Escaping: from a handler" in runtime.last_batch_error)
    assert runtime.thread.is_alive()
    assert runtime.call(divmod, 7, 2) == (3, 1)
    stream.submit(2, handler.key(2))
    _wait(lambda: stream.stats.processed == 1)
    assert handler.delivered[0][0] == 2


def test_calls_run_between_cycles_and_pass_results_and_errors(runtime):
    assert runtime.call(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        runtime.call(divmod, 1, 0)
    assert runtime.call(lambda: threading.current_thread()) is runtime.thread
    nested = runtime.call(lambda: runtime.call(lambda: 5))  # no deadlock
    assert nested == 5
    assert runtime.stats.calls == 4  # the nested one ran inline, uncounted


def test_frames_without_a_key_are_never_shared(runtime):
    cache = FakeCache()
    handler = Handler("a", cache)

    def prepare(item: int) -> PreparedFrame:
        return PreparedFrame(rgb=item, key=None, feature_cache=cache,
                             preprocess=lambda rgb: torch.full((1, 3, 2, 2), float(rgb)),
                             context=item)

    handler.prepare = prepare
    handler.process = lambda frame: float(frame.pixel_values.flatten()[0])
    stream = runtime.add_stream("a", handler)
    stream.submit(4)
    _wait(lambda: stream.stats.processed == 1)
    assert handler.delivered[0][0] == 4 and cache.batches == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_max_batch_is_validated(bad):
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        Runtime(max_batch=bad)
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        Runtime.default().set_max_batch(bad)


# ------------------------------------------------- feature memory: released once read by all
@dataclass
class Encoded:
    """Shaped like `Sam3VisionEncoderOutput`."""

    last_hidden_state: torch.Tensor
    fpn_hidden_states: tuple[torch.Tensor, ...]
    fpn_position_encoding: tuple[torch.Tensor, ...]


class CameraHandler(Handler):
    """A stream of camera `camera` read through a real `VisionFeatureCache` with FrameKeys."""

    def key(self, value: int) -> FrameKey:
        return FrameKey(f"/{self.camera}/image", value, 0, self.camera)

    def process(self, frame: PreparedFrame) -> float:
        self._maybe_fail("process", frame.context)
        features = self.cache.get(frame.key, frame.pixel_values)
        return float(features.last_hidden_state.flatten()[0])


def _real_cache(capacity: int = 8) -> tuple[VisionFeatureCache, list[list[float]]]:
    passes: list[list[float]] = []

    def backbone(pixel_values: torch.Tensor) -> Encoded:
        passes.append(pixel_values[:, 0, 0, 0].tolist())
        hidden = pixel_values.clone()  # a frame is encoded as its own pixels
        return Encoded(hidden, (hidden,), (hidden * 0,))

    backbone.name = "fake"
    return VisionFeatureCache(backbone, capacity=capacity), passes


def _after_cycle(runtime: Runtime) -> None:
    runtime.call(lambda: None)  # calls run between cycles: the one that delivered has ended


def test_a_camera_read_by_one_stream_holds_no_features_between_frames(runtime):
    cache, passes = _real_cache()
    handlers = [CameraHandler(name, cache) for name in ("a", "b")]
    streams = [runtime.add_stream(h.name, h) for h in handlers]
    _submit_in_one_cycle(runtime, streams, handlers, 1)
    _wait(lambda: all(s.stats.processed == 1 for s in streams))
    _after_cycle(runtime)
    assert passes == [[1.0, 1.0]]
    assert [h.delivered[0][0] for h in handlers] == [1, 1]
    assert not any(cache.contains(h.key(1)) for h in handlers)


def _known_readers(runtime: Runtime, cache: VisionFeatureCache):
    """A segmenter and a tracker stream of one camera that have both read its frame 1."""
    segmenter = CameraHandler("segmenter", cache, shared_camera="front")
    tracker = CameraHandler("tracker", cache, shared_camera="front")
    s1, s2 = runtime.add_stream("s", segmenter), runtime.add_stream("t", tracker)
    _submit_in_one_cycle(runtime, (s1, s2), (segmenter, tracker), 1)
    _wait(lambda: s1.stats.processed == 1 and s2.stats.processed == 1)
    _after_cycle(runtime)
    assert not cache.contains(segmenter.key(1))  # both read it in that cycle
    return segmenter, tracker, s1, s2


def test_a_frame_stays_cached_until_every_stream_of_its_camera_read_it(runtime):
    cache, passes = _real_cache()
    segmenter, tracker, s1, s2 = _known_readers(runtime, cache)
    # Frame 2 reaches the segmenter's stream in one cycle, the tracker's in the next.
    s1.submit(2, segmenter.key(2))
    _wait(lambda: s1.stats.processed == 2)
    _after_cycle(runtime)
    assert cache.contains(segmenter.key(2))  # the tracker has not read it yet
    s2.submit(2, tracker.key(2))
    _wait(lambda: s2.stats.processed == 2)
    _after_cycle(runtime)
    assert passes == [[1.0], [2.0]]  # no second pass for the tracker
    assert not cache.contains(segmenter.key(2))


def test_an_older_frame_read_in_the_cycle_of_a_newer_one_is_not_encoded_twice(runtime):
    cache, passes = _real_cache()
    segmenter, tracker, s1, s2 = _known_readers(runtime, cache)
    s1.submit(2, segmenter.key(2))
    _wait(lambda: s1.stats.processed == 2)
    gate = Gate(runtime)
    s1.submit(3, segmenter.key(3))  # the segmenter is a frame ahead of the tracker
    s2.submit(2, tracker.key(2))
    gate.open()
    _wait(lambda: s1.stats.processed == 3 and s2.stats.processed == 2)
    _after_cycle(runtime)
    assert passes == [[1.0], [2.0], [3.0]]  # frame 2 read from the cache, encoded once
    assert [v for v, _ in tracker.delivered] == [1, 2]
    assert not cache.contains(segmenter.key(2))
    assert cache.contains(segmenter.key(3))  # the tracker may still read frame 3


@pytest.mark.parametrize(("declared", "passes_expected"), [(True, [[1.0]]),
                                                          (False, [[1.0], [1.0]])])
def test_a_declared_reader_that_has_read_nothing_yet_keeps_the_frame(runtime, declared,
                                                                     passes_expected):
    cache, passes = _real_cache()
    segmenter = CameraHandler("segmenter", cache, shared_camera="front")
    tracker = CameraHandler("tracker", cache, shared_camera="front")
    source = "/front/image" if declared else None
    s1 = runtime.add_stream("s", segmenter, source=source)
    s2 = runtime.add_stream("t", tracker, source=source)
    s1.submit(1, segmenter.key(1))
    _wait(lambda: s1.stats.processed == 1)
    _after_cycle(runtime)
    s2.submit(1, tracker.key(1))
    _wait(lambda: s2.stats.processed == 1)
    _after_cycle(runtime)
    assert passes == passes_expected  # undeclared: unknown until it reads, so encoded again
    assert not cache.contains(segmenter.key(1))


@pytest.mark.parametrize(("capacity", "each_once"), [(8, True), (4, False)])
def test_four_cameras_with_lagging_trackers_encode_each_frame_once(capacity, each_once):
    """A segmenter and a tracker per camera; each tracker's copy of a frame arrives one cycle
    late. The pipeline's capacity (2 frames per camera) encodes every frame once; half of it
    re-encodes frames that were evicted before their tracker read them."""
    runtime = Runtime(max_batch=4, name="test_lag")
    cache, passes = _real_cache(capacity=capacity)
    cameras = ("a", "b", "c", "d")
    pairs = []
    for camera in cameras:
        segmenter = CameraHandler(f"s{camera}", cache, shared_camera=camera)
        tracker = CameraHandler(f"t{camera}", cache, shared_camera=camera)
        source = segmenter.key(0).source
        pairs.append((segmenter, runtime.add_stream(f"s{camera}", segmenter, source=source),
                      tracker, runtime.add_stream(f"t{camera}", tracker, source=source)))
    gate = Gate(runtime)
    for segmenter, s_stream, _, _ in pairs:
        s_stream.submit(1, segmenter.key(1))
    gate.open()
    _wait(lambda: all(p[1].stats.processed == 1 for p in pairs))
    gate = Gate(runtime)
    for segmenter, s_stream, tracker, t_stream in pairs:
        s_stream.submit(2, segmenter.key(2))  # the segmenters are one frame ahead
        t_stream.submit(1, tracker.key(1))
    gate.open()
    _wait(lambda: all(p[1].stats.processed == 2 and p[3].stats.processed == 1 for p in pairs))
    for _, _, tracker, t_stream in pairs:
        t_stream.submit(2, tracker.key(2))
    _wait(lambda: all(p[3].stats.processed == 2 for p in pairs))
    _after_cycle(runtime)
    encoded = sum(len(p) for p in passes)
    assert (encoded == 8) is each_once and encoded >= 8, passes  # 4 cameras x 2 frames
    for segmenter, _, tracker, _ in pairs:
        assert [v for v, _ in segmenter.delivered] == [v for v, _ in tracker.delivered] == [1, 2]
        assert not cache.contains(segmenter.key(1)) and not cache.contains(segmenter.key(2))


@pytest.mark.parametrize("stage", ["prepare", "process"])
def test_a_reader_that_fails_every_frame_does_not_hold_its_cameras_frames(runtime, stage):
    cache, _ = _real_cache()
    segmenter = CameraHandler("segmenter", cache, shared_camera="front")
    tracker = CameraHandler("tracker", cache, shared_camera="front",
                            fail_on=set(range(1, 6)), fail_stage=stage)
    source = segmenter.key(0).source
    s1 = runtime.add_stream("s", segmenter, source=source)
    s2 = runtime.add_stream("t", tracker, source=source)
    for value in range(1, 6):
        gate = Gate(runtime)
        s1.submit(value, segmenter.key(value))
        s2.submit(value, tracker.key(value))
        gate.open()
        _wait(lambda v=value: s1.stats.processed == v and s2.stats.errors == v)
        _after_cycle(runtime)
        assert not cache.contains(segmenter.key(value))
    assert len(tracker.errors) == 5


def test_a_camera_leaving_mid_cycle_leaves_no_features_behind(runtime):
    # Its frame was encoded in the cycle (batched with another camera's) but never read: no
    # stream of its camera was left to release it, and capacity eviction never came.
    cache, _ = _real_cache(capacity=4)
    front = CameraHandler("front", cache, process_s=0.3)  # its process does not sleep: below
    wrist = CameraHandler("wrist", cache)
    front_stream = runtime.add_stream("front", front, source="/front/image")
    wrist_stream = runtime.add_stream("wrist", wrist, source="/wrist/image")
    process = front.process

    def slow_process(frame):
        front.processing.set()
        time.sleep(front.process_s)
        return process(frame)

    front.process = slow_process
    _submit_in_one_cycle(runtime, [front_stream, wrist_stream], [front, wrist], 1)
    assert front.processing.wait(5)
    runtime.remove_stream(wrist_stream)  # deactivated while the cycle is in front's heads
    front.process_s = 0.0
    for value in range(2, 6):
        front_stream.submit(value, front.key(value))
        _wait(lambda value=value: front_stream.stats.processed >= value)
    _after_cycle(runtime)
    assert not cache.contains(wrist.key(1))
    assert list(cache._entries) == []

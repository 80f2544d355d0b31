"""The runtime: one compute thread per process serving every camera stream with batched passes.

    camera A -> [slot A] -+                        +-> process A (session A) -> deliver A
    camera B -> [slot B] -+-> one cycle: newest    +-> process B (session B) -> deliver B
    camera C -> [slot C] -+   frame of each stream,+-> process C ...
                              decode + preprocess,
                              one batched backbone
                              pass per model
    service / parameter calls -> call(fn): run between cycles, in order

* A **stream** is one camera feeding one session (segmenter or tracker). It keeps
  latest-frame semantics: a new frame replaces the waiting one (counted as dropped); frames
  never queue, so a model slower than the cameras always works on the newest frames.
* Each **cycle** takes the newest waiting frame of every stream (round-robin when more distinct
  frames wait than `max_batch`, so a fast camera cannot starve a slow one), prepares them
  (decode, preprocess: once per frame even when a segmenter and a tracker stream consume the
  same image), runs one backbone pass per model over all frames whose features are not cached,
  then each stream's heads on its own features, and hands each result to its stream's
  `deliver` (which must not block: publishing runs on the node's output thread).
* **Calls** (`call(fn)`: prompt changes, parameter updates, model loading) run on the same
  thread between cycles, so model state is never touched by two threads and PyTorch keeps one
  OpenMP thread team (see `compute_thread`).
* An error in one stream's frame is reported to that stream only; the others' results of the
  same cycle are delivered.

Pure Python: no rclpy, no torch import at module level (torch is needed only when a cycle
batches pixel tensors).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

R = TypeVar("R")


@dataclass
class PreparedFrame:
    """One decoded frame of a stream, ready for the model.

    Attributes:
        rgb: (H, W, 3) uint8 RGB.
        key: Identifies the camera image (stamp and frame id); streams that see the same key
            share its preprocessing and backbone features. None: never shared.
        feature_cache: The `VisionFeatureCache` of the stream's model (one per loaded model).
        preprocess: rgb -> (1, 3, S, S) pixel values for that model.
        needs_backbone: False when the session reuses earlier features for this frame (the
            tracker's `reuse_backbone_frames`), so no backbone pass is spent on it.
        context: Whatever the stream needs again in `process`/`deliver` (message header, ...).
        pixel_values: Filled by the runtime before `process`.
    """

    rgb: Any
    key: Hashable | None
    feature_cache: Any
    preprocess: Callable[[Any], Any]
    needs_backbone: bool = True
    context: Any = None
    pixel_values: Any = None


class StreamHandler(Protocol):
    """What a stream's owner (a node, a benchmark, a test) plugs into the runtime.

    `prepare` and `process` run on the compute thread; `deliver` too, so it must only hand the
    result over (e.g. to an output thread). `failed` is told about any exception from them.
    """

    def prepare(self, item: Any) -> PreparedFrame | None:
        """Decode a submitted item (a message); None skips it without counting an error."""
        ...

    def process(self, frame: PreparedFrame) -> Any:
        """Run the stream's session on a frame whose features are cached; return the result."""
        ...

    def deliver(self, frame: PreparedFrame, result: Any, latency_s: float) -> None:
        """Hand the result on (non-blocking)."""
        ...

    def failed(self, error: Exception) -> None:
        """A frame of this stream failed (the stream keeps running)."""
        ...


@dataclass
class StreamStats:
    """Counters of one stream since it was added (a node adds its stream on activate)."""

    received: int = 0
    dropped: int = 0
    processed: int = 0
    errors: int = 0
    last_latency_ms: float = float("nan")
    latency_sum_ms: float = 0.0
    waiting_sum_ms: float = 0.0
    """Submit to the start of its cycle: waiting for the compute thread."""
    prepare_sum_ms: float = 0.0
    """Decoding (the stream's `prepare`)."""
    process_sum_ms: float = 0.0
    """The session's heads (`process`), after the cycle's shared encoding."""

    def as_dict(self) -> dict[str, float]:
        def mean(total: float) -> float:
            return total / self.processed if self.processed else float("nan")

        return {"received": self.received, "dropped": self.dropped,
                "processed": self.processed, "errors": self.errors,
                "last_latency_ms": self.last_latency_ms,
                "mean_latency_ms": mean(self.latency_sum_ms),
                "mean_waiting_ms": mean(self.waiting_sum_ms),
                "mean_decode_ms": mean(self.prepare_sum_ms),
                "mean_heads_ms": mean(self.process_sum_ms)}


class Stream:
    """A registered stream; `submit` frames to it from any thread (never blocks)."""

    def __init__(self, runtime: Runtime, name: str, handler: StreamHandler, order: int,
                 source: str | None = None):
        self.name = name
        self.source = source
        """The camera this stream reads (`FrameKey.source`), if known when it is added."""
        self.handler = handler
        self._runtime = runtime
        self._order = order
        self._item: Any = None
        self._key: Hashable | None = None
        self._submitted_s = 0.0
        self._has_item = False
        self._last_read: Hashable | None = None
        """Key of the latest frame this stream processed: tells the feature cache which frames
        it will not ask for again."""
        self.closed = False
        self.stats = StreamStats()

    def submit(self, item: Any, key: Hashable | None = None) -> None:
        """Offer the newest frame; a frame still waiting is replaced and counted as dropped.

        Args:
            item: What `handler.prepare` decodes (e.g. the image message).
            key: The frame's identity (stamp, frame id) if known before decoding, so that the
                scheduler counts frames shared by two streams once against `max_batch`.
        """
        self._runtime._submit(self, item, key)


@dataclass
class RuntimeStats:
    """Counters of the runtime since it started."""

    cycles: int = 0
    backbone_passes: int = 0
    frames_encoded: int = 0
    frames_processed: int = 0
    calls: int = 0
    largest_batch: int = 0
    encode_s: float = 0.0
    """Preprocessing and backbone passes of all cycles."""
    busy_s: float = 0.0
    started_s: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float]:
        mean_batch = self.frames_encoded / self.backbone_passes if self.backbone_passes else 0.0
        elapsed = max(time.monotonic() - self.started_s, 1e-9)
        return {"cycles": self.cycles, "backbone_passes": self.backbone_passes,
                "frames_encoded": self.frames_encoded, "mean_batch": mean_batch,
                "largest_batch": self.largest_batch, "frames_processed": self.frames_processed,
                "calls": self.calls, "busy_fraction": self.busy_s / elapsed,
                "mean_encode_ms": (self.encode_s / self.cycles * 1e3 if self.cycles
                                   else float("nan"))}


class _Call:
    __slots__ = ("args", "done", "error", "fn", "kwargs", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Runtime:
    """The compute thread and the stream scheduler (see the module docstring).

    Args:
        max_batch: Most distinct frames encoded in one backbone pass (>= 1).
        name: Thread name prefix.
    """

    _default: Runtime | None = None
    _default_lock = threading.Lock()

    def __init__(self, max_batch: int = 4, name: str = "sam3_compute") -> None:
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._streams: list[Stream] = []
        self._calls: list[_Call] = []
        self._orders = itertools.count()
        self._next_order = 0  # round-robin position: the stream order served first next cycle
        self._in_cycle: set[Stream] = set()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.stats = RuntimeStats()
        self.last_batch_error = ""
        self._taking = False  # choosing a cycle's frames (see _loop)
        self._thread.start()

    # ------------------------------------------------------------------------------ process
    @classmethod
    def default(cls) -> Runtime:
        """The process's runtime (created on first use), used by every node of the process."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = Runtime()
            return cls._default

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def set_max_batch(self, max_batch: int) -> None:
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        with self._cond:
            self.max_batch = max_batch

    # -------------------------------------------------------------------------------- calls
    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run `fn` on the compute thread between cycles, wait, and return its result.

        Calls from any thread run in order; an exception raised by `fn` is raised here. A call
        made from the compute thread itself runs directly, so nested use cannot deadlock.
        """
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        request = _Call(fn, args, kwargs)
        with self._cond:
            self._calls.append(request)
            self._cond.notify_all()
        request.done.wait()
        error, request.error = request.error, None
        if error is not None:
            # No reference cycle through the traceback (this frame's `error`, the compute
            # thread's `request`): a failed model load must be freed when the caller drops
            # the exception, not at some later garbage collection (GPU memory).
            try:
                raise error
            finally:
                error = None
        return request.result

    # ------------------------------------------------------------------------------ streams
    def add_stream(self, name: str, handler: StreamHandler,
                   source: str | None = None) -> Stream:
        """Register a stream; frames submitted to it are served from the next cycle.

        Args:
            name: For diagnostics.
            handler: The stream's owner.
            source: The camera it reads (the frame keys' `source`, a resolved topic name):
                until the stream has read a frame, the camera's cached frames are kept for it
                (its first frame then costs no second backbone pass).
        """
        with self._cond:
            stream = Stream(self, name, handler, next(self._orders), source)
            self._streams.append(stream)
            return stream

    def remove_stream(self, stream: Stream) -> None:
        """Unregister a stream. After this returns, none of its handler's methods runs again
        (waits for a cycle that is using it, unless called from the compute thread)."""
        with self._cond:
            stream.closed = True
            stream._item, stream._has_item = None, False
            if stream in self._streams:
                self._streams.remove(stream)
            if threading.current_thread() is not self._thread:
                self._cond.wait_for(lambda: stream not in self._in_cycle)

    def streams(self) -> list[Stream]:
        with self._cond:
            return list(self._streams)

    def _submit(self, stream: Stream, item: Any, key: Hashable | None) -> None:
        with self._cond:
            if stream.closed:
                return
            if stream._has_item:
                stream.stats.dropped += 1
            stream._item, stream._key, stream._has_item = item, key, True
            stream._submitted_s = time.perf_counter()
            stream.stats.received += 1
            self._cond.notify_all()
        # Hand the GIL over now: the compute thread just woken would otherwise wait until the
        # submitting thread (the executor) blocks again (~0.4 ms of rclpy bookkeeping).
        time.sleep(0)

    # ------------------------------------------------------------------------------- loop
    def _loop(self) -> None:
        # Nothing may end this thread: every call made later would wait for it forever.
        while True:
            try:
                self._serve_once()
            except BaseException as err:
                self.last_batch_error = f"runtime loop: {type(err).__name__}: {err}"
                with self._cond:
                    if self._taking:
                        # Choosing the frames failed: they would fail again on every turn of
                        # this loop; dropped instead (a cycle's own frames were taken already).
                        self._taking = False
                        for stream in self._streams:
                            if stream._has_item:
                                stream._item, stream._has_item = None, False
                                stream.stats.dropped += 1

    def _serve_once(self) -> None:
        """Run one call or one cycle (waits for either)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._calls or any(s._has_item for s in self._streams))
            if self._calls:
                request = self._calls.pop(0)
                taken = None
            else:
                request = None
                self._taking = True
                taken = self._take_locked()
                self._taking = False
                self._in_cycle = {stream for stream, _, _ in taken}
        started = time.perf_counter()
        if request is not None:
            try:
                request.result = request.fn(*request.args, **request.kwargs)
            except BaseException as err:  # handed to the caller, never kills the thread
                request.error = err
            self.stats.calls += 1
            request.done.set()
        else:
            try:
                self._cycle(taken)
            finally:
                with self._cond:
                    self._in_cycle = set()
                    self._cond.notify_all()
        self.stats.busy_s += time.perf_counter() - started

    def _take_locked(self) -> list[tuple[Stream, Any, float]]:
        """The newest item of waiting streams in round-robin order, at most `max_batch`
        distinct frame keys (frames shared by several streams count once)."""
        waiting = sorted((s for s in self._streams if s._has_item), key=lambda s: s._order)
        # Start with the first stream at or after the round-robin position.
        start = next((i for i, s in enumerate(waiting) if s._order >= self._next_order), 0)
        ordered = waiting[start:] + waiting[:start]
        taken: list[tuple[Stream, Any, float]] = []
        keys: set[Any] = set()
        for stream in ordered:
            key = stream._key if stream._key is not None else ("unkeyed", id(stream))
            if key not in keys and len(keys) >= self.max_batch:
                continue
            keys.add(key)
            taken.append((stream, stream._item, stream._submitted_s))
            stream._item, stream._has_item = None, False
            if stream._key is not None:
                # Read by the end of this cycle, even if its decoding or heads fail: a stream
                # that fails every frame must not keep its camera's frames cached.
                stream._last_read = stream._key
        if len(taken) < len(ordered):
            # Continue next cycle with the first stream that was left waiting.
            left = [s for s in ordered if s._has_item]
            self._next_order = left[0]._order
        else:
            self._next_order = ordered[-1]._order + 1
        return taken

    def _cycle(self, taken: list[tuple[Stream, Any, float]]) -> None:
        self.stats.cycles += 1
        cycle_start = time.perf_counter()
        prepared: list[tuple[Stream, PreparedFrame, float]] = []
        decode_s: dict[Stream, float] = {}
        for stream, item, submitted_s in taken:
            started = time.perf_counter()
            try:
                frame = stream.handler.prepare(item)
            except Exception as err:
                self._fail(stream, err)
                continue
            decode_s[stream] = time.perf_counter() - started
            if frame is not None:
                prepared.append((stream, frame, submitted_s))
        started = time.perf_counter()
        self._encode(prepared)
        self.stats.encode_s += time.perf_counter() - started
        for stream, frame, submitted_s in prepared:
            if stream.closed:
                continue
            started = time.perf_counter()
            try:
                result = stream.handler.process(frame)
            except Exception as err:
                self._fail(stream, err)
                continue
            ended = time.perf_counter()
            latency_s = ended - submitted_s
            with self._cond:
                stats = stream.stats
                stats.processed += 1
                stats.last_latency_ms = latency_s * 1e3
                stats.latency_sum_ms += latency_s * 1e3
                stats.waiting_sum_ms += (cycle_start - submitted_s) * 1e3
                stats.prepare_sum_ms += decode_s.get(stream, 0.0) * 1e3
                stats.process_sum_ms += (ended - started) * 1e3
            self.stats.frames_processed += 1
            if frame.key is not None:
                stream._last_read = frame.key
            if stream.closed:
                continue
            try:
                stream.handler.deliver(frame, result, latency_s)
            except Exception as err:
                self._fail(stream, err)
        self._release_read(prepared)

    def _release_read(self, prepared: list[tuple[Stream, PreparedFrame, float]]) -> None:
        """Let the feature caches of this cycle drop frames every stream has read past.

        Without it a frame's features stay cached until its camera's next pass (~135 MB per
        camera at 1008 px), although with one stream per camera nobody reads them again.
        """
        with self._cond:
            readers = [(s.source, s._last_read) for s in self._streams]
        caches = {id(frame.feature_cache): frame.feature_cache for _, frame, _ in prepared
                  if frame.key is not None}
        for cache in caches.values():
            try:
                cache.release_read(readers)
            except Exception as err:  # memory is at stake, not results: keep the thread
                self.last_batch_error = f"release_read: {type(err).__name__}: {err}"

    def _encode(self, prepared: list[tuple[Stream, PreparedFrame, float]]) -> None:
        """Preprocess each distinct frame once and run one backbone pass per model over the
        frames whose features are not cached yet."""
        pixels: dict[tuple[int, Any], Any] = {}
        batches: dict[int, tuple[Any, list[Any], list[Any]]] = {}
        read: dict[int, tuple[Any, list[Any]]] = {}  # per cache, the keys this cycle reads
        failed: set[int] = set()
        for index, (stream, frame, _) in enumerate(prepared):
            share = (id(frame.feature_cache), frame.key) if frame.key is not None else None
            try:
                if share is not None and share in pixels:
                    frame.pixel_values = pixels[share]
                    continue
                frame.pixel_values = frame.preprocess(frame.rgb)
            except Exception as err:
                self._fail(stream, err)
                failed.add(index)
                continue
            if share is None:
                continue  # not shareable: the session runs the backbone itself
            pixels[share] = frame.pixel_values
            cache = frame.feature_cache
            read.setdefault(id(cache), (cache, []))[1].append(frame.key)
            if frame.needs_backbone and not cache.contains(frame.key):
                entry = batches.setdefault(id(cache), (cache, [], []))
                entry[1].append(frame.key)
                entry[2].append(frame.pixel_values)
        if failed:
            prepared[:] = [p for i, p in enumerate(prepared) if i not in failed]
        for cache, keys in read.values():
            cache.pin(keys)  # until `_release_read` at the end of this cycle
        for cache, all_keys, all_tensors in batches.values():
            # A pass never encodes more frames than the cache holds (they would be evicted
            # before their streams read them).
            step = max(1, min(self.max_batch, cache.capacity))
            for start in range(0, len(all_keys), step):
                keys, tensors = all_keys[start:start + step], all_tensors[start:start + step]
                try:
                    if len(tensors) == 1:
                        batch = tensors[0]
                    else:
                        import torch

                        batch = torch.cat(tensors, dim=0)
                    cache.compute_batch(keys, batch)
                except Exception as err:
                    # Features stay uncomputed: each stream's own call then reports its error.
                    self.last_batch_error = f"{type(err).__name__}: {err}"
                    continue
                self.stats.backbone_passes += 1
                self.stats.frames_encoded += len(keys)
                self.stats.largest_batch = max(self.stats.largest_batch, len(keys))

    def _fail(self, stream: Stream, error: Exception) -> None:
        with self._cond:
            stream.stats.errors += 1
        if stream.closed:
            return
        with contextlib.suppress(Exception):  # a failing reporter must not stop the others
            stream.handler.failed(error)

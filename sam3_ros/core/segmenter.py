"""SAM3 text/box-exemplar prompted detection and instance segmentation of single images.

Split as in transformers' SAM3 (processor / session / model):

* `Sam3Segmenter` is the stateless backend: preprocess, one vision-backbone pass per frame for
  all prompts, the DETR decoder per chunk of prompts, and transformers' own post-processing.
* `SegmenterSession` holds the state of one camera stream: the prompt set with its cached text
  embeddings (computed once per prompt set, never per frame) and its generation counter.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import ConfigError, InvalidImageError, InvalidPromptError
from sam3_ros.core.model_loading import LoadedSam3
from sam3_ros.core.preprocess import ignore_read_only_warning, make_device_preprocessor
from sam3_ros.core.prompts import PromptSpec, exemplar_arrays, validate_prompts
from sam3_ros.core.text_cache import TextEmbeddingCache
from sam3_ros.core.vision_features import VisionFeatureCache

if TYPE_CHECKING:
    from sam3_ros.core.bytetrack import ByteTracker

TEXT_MAX_TOKENS = 32
"""SAM3's text encoder context length (the processor pads every prompt to it)."""

_log = logging.getLogger(__name__)


@dataclass
class SegmenterConfig:
    """Thresholds and limits of the segmenter (all live-changeable).

    Attributes:
        score_threshold: Keep instances whose score (presence x query) is above this, in [0, 1].
        mask_threshold: Binarise mask probabilities above this, in [0, 1].
        max_detections: Keep at most this many instances per frame (highest scores first).
        max_prompts: Largest accepted prompt set.
        prompts_per_batch: Prompts decoded together in one batch (memory vs. speed); the vision
            backbone still runs once per frame for all of them.
        max_mask_memory_mb: Most memory (MiB) a frame's full-size masks may take (one byte
            per pixel per instance): with many instances on a large image (10,000 at
            16 MP would be 168 GB) fewer than `max_detections` are kept, highest scores
            first, never fewer than 1.
    """

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_detections: int = 100
    max_prompts: int = 64
    prompts_per_batch: int = 16
    max_mask_memory_mb: int = 1024

    def __post_init__(self) -> None:
        for name in ("score_threshold", "mask_threshold"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        for name in ("max_detections", "max_prompts", "prompts_per_batch", "max_mask_memory_mb"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value}")

    def detection_limit(self, height: int, width: int) -> int:
        """Most instances kept on a (height x width) frame: `max_detections`, fewer when
        their masks would exceed `max_mask_memory_mb` (at least 1)."""
        fit = int(self.max_mask_memory_mb) * 2**20 // max(1, height * width)
        return max(1, min(self.max_detections, fit))


@dataclass(frozen=True)
class EncodedPrompts:
    """A validated prompt set with its text embeddings (computed once per set).

    Attributes:
        specs: The prompts; index = class id.
        text_features: (P, 32, D) projected text-encoder states, on the model's device.
        attention_mask: (P, 32) text attention mask.
        generation: Increments with every new prompt set of a session.
    """

    specs: tuple[PromptSpec, ...]
    text_features: Any
    attention_mask: Any
    generation: int

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(spec.label for spec in self.specs)


def _expand_batch(vision_embeds: Any, batch: int) -> Any:
    """Broadcast one frame's vision features to `batch` prompts without copying."""
    if batch == 1:
        return vision_embeds
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    def expand(t):
        return t.expand(batch, *t.shape[1:])

    return Sam3VisionEncoderOutput(
        last_hidden_state=expand(vision_embeds.last_hidden_state),
        fpn_hidden_states=tuple(expand(t) for t in vision_embeds.fpn_hidden_states),
        fpn_position_encoding=tuple(expand(t) for t in vision_embeds.fpn_position_encoding),
    )


class StageTimer:
    """Per-stage wall-clock timing of `Sam3Segmenter.segment`, for benchmarks only.

    Set `Sam3Segmenter.stage_timer` to one and every frame adds its seconds per stage to
    `times` (keys "preprocess", "backbone", "heads", "masks"; a stage that did not run, e.g.
    masks on a frame without instances, is absent); `clear()` between frames. On a CUDA device
    each stage is bracketed by `torch.cuda.synchronize`, so queued GPU work is charged to the
    stage that queued it; this (and any timing) happens only while a timer is set.

    Args:
        device: The model's device (synchronised when it is a CUDA device).
    """

    def __init__(self, device: Any = None) -> None:
        import torch

        self.times: dict[str, float] = {}
        self._device = torch.device(device) if device is not None else None
        self._cuda = self._device is not None and self._device.type == "cuda"

    def _sync(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self._device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def clear(self) -> None:
        self.times.clear()


_UNTIMED = contextlib.nullcontext()
"""What a stage runs in when no `StageTimer` is set (reusable, no work)."""


UPSAMPLE_CHUNK_PIXELS = 1 << 21
"""Full-resolution float pixels upsampled at once (8 MiB of float32): instances are upsampled
a few at a time, each chunk thresholded straight into the result, so the transient float
buffer stays small and hot in cache (one 74 MB buffer for 20 instances at 1280x720 took twice
as long) and only the (N, H, W) bool result scales with instances x pixels."""


def upsample_masks(low_res: Any, height: int, width: int, threshold: float) -> np.ndarray:
    """(N, h, w) float mask values -> (N, H, W) bool at full resolution: bilinear
    (align_corners=False), then `> threshold`, in chunks.

    Bilinear upsampling treats instances independently, so chunking gives the same bits as one
    call (tested against transformers' post-processing). Each chunk is written straight into
    the returned array (on a GPU: one device-to-host copy per chunk, no host temporary).
    """
    import torch

    count = int(low_res.shape[0])
    masks = np.empty((count, height, width), np.bool_)
    out = torch.from_numpy(masks)
    on_host = low_res.device.type == "cpu"
    chunk = max(1, UPSAMPLE_CHUNK_PIXELS // (height * width))
    for start in range(0, count, chunk):
        values = torch.nn.functional.interpolate(
            low_res[start:start + chunk].unsqueeze(0), size=(height, width), mode="bilinear",
            align_corners=False).squeeze(0)
        if on_host:
            torch.gt(values, threshold, out=out[start:start + chunk])
        else:
            out[start:start + chunk].copy_(values > threshold)
    return masks


class Sam3Segmenter:
    """Stateless SAM3 detector backend for single images.

    Args:
        loaded: The loaded checkpoint (detector + processor), possibly shared with a tracker.
        feature_cache: Shares vision features with other users of the same frame; None runs the
            backbone directly.
        preprocessing: "auto", "device" or "processor" (`preprocess.PREPROCESS_MODES`): resize
            and normalise with `DevicePreprocessor` on the model's device, or with transformers'
            processor on the CPU; the attribute `preprocessing` then says which one runs.

    Raises:
        ConfigError: an unknown preprocessing, or "device" with a processor setting that
            `DevicePreprocessor` does not reproduce.
        text_cache: On-disk text embeddings (`TextEmbeddingCache`): a prompt text encoded
            once for this checkpoint, dtype and device is read back instead of re-encoded;
            None encodes every prompt set.
    """

    def __init__(self, loaded: LoadedSam3, feature_cache: VisionFeatureCache | None = None,
                 preprocessing: str = "auto", text_cache: TextEmbeddingCache | None = None):
        self.loaded = loaded
        self.feature_cache = feature_cache or VisionFeatureCache(loaded.detector, capacity=1)
        self._device_preprocessor, self.preprocessing = make_device_preprocessor(
            preprocessing, loaded.processor.image_processor, loaded.device, loaded.dtype)
        self.text_cache = text_cache
        self._text_key: dict[str, Any] | None = None
        self.text_encoder_runs = 0
        """Text-encoder batches run so far (prompt texts not found in the text cache)."""
        self.stage_timer: StageTimer | None = None
        """Set by a benchmark to time the stages of `segment` (None: no timing, no syncs)."""

    def _stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        timer = self.stage_timer
        return _UNTIMED if timer is None else timer.stage(name)

    def text_cache_key(self) -> dict[str, Any] | None:
        """What a cached embedding of this model must have been computed with (None: the
        checkpoint's files are unknown, so nothing is cached)."""
        if self.text_cache is None:
            return None
        if self._text_key is None:
            import torch
            import transformers

            loaded = self.loaded
            if loaded.checkpoint_dir is None:
                _log.warning("text cache off: the files of checkpoint '%s' were not found "
                             "locally", loaded.source)
                self.text_cache = None
                return None
            device = loaded.device.type
            if device == "cuda":
                device += ":" + torch.cuda.get_device_name(loaded.device)
            try:
                if loaded.files_changed():
                    # The hash would describe the new files, the weights in memory are the
                    # old ones: their embeddings must not be stored under the new key.
                    _log.warning("text cache off: the files of checkpoint '%s' changed after "
                                 "it was loaded (configure again to use the new ones)",
                                 loaded.checkpoint_dir)
                    self.text_cache = None
                    return None
                fingerprint = self.text_cache.fingerprint(loaded.checkpoint_dir)
            except OSError as err:
                _log.warning("text cache off: cannot hash checkpoint '%s': %s",
                             loaded.checkpoint_dir, err)
                self.text_cache = None
                return None
            tokenizer = loaded.processor.tokenizer
            self._text_key = {
                "checkpoint_sha256": fingerprint,
                "model_class": type(loaded.detector).__name__,
                "dtype": str(loaded.dtype).removeprefix("torch."),
                "device": device,
                "quantization": loaded.quantization,
                "text_max_tokens": TEXT_MAX_TOKENS,
                "tokenizer_max_length": int(tokenizer.model_max_length),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        return self._text_key

    def _encode_texts(self, texts: Sequence[str]) -> tuple[Any, Any]:
        import torch

        tokens = self.loaded.processor(text=list(texts), return_tensors="pt")
        input_ids = tokens["input_ids"].to(self.loaded.device)
        attention_mask = tokens["attention_mask"].to(self.loaded.device)
        with torch.inference_mode():
            text_out = self.loaded.detector.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask)
        self.text_encoder_runs += 1
        return text_out.pooler_output, attention_mask

    @property
    def model_image_size(self) -> int:
        return int(self.loaded.processor.image_processor.size["height"])

    def encode_prompts(self, specs: Sequence[PromptSpec], generation: int = 0) -> EncodedPrompts:
        """Tokenise and encode the prompts' texts once (texts found in the text cache are read
        back instead; new ones are encoded in one batch and stored).

        Raises:
            InvalidPromptError: a text is longer than the encoder's 32 tokens.
        """
        tokenizer = self.loaded.processor.tokenizer
        texts = [spec.model_text for spec in specs]
        for i, text in enumerate(texts):
            n_tokens = len(tokenizer(text)["input_ids"])
            if n_tokens > TEXT_MAX_TOKENS:
                raise InvalidPromptError(
                    f"prompt {i} ('{text[:40]}...') has {n_tokens} tokens, the text encoder reads "
                    f"at most {TEXT_MAX_TOKENS}")
        key = self.text_cache_key()
        if key is None or not texts:
            features, attention_mask = self._encode_texts(texts)
        else:
            features, attention_mask = self._encode_cached(texts, key)
        return EncodedPrompts(tuple(specs), features, attention_mask, generation)

    def _encode_cached(self, texts: Sequence[str], key: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        cache = self.text_cache
        device, dtype = self.loaded.device, self.loaded.dtype
        found: dict[str, tuple[Any, Any]] = {}
        unique = list(dict.fromkeys(texts))
        for text in unique:
            entry = cache.load(key, text)
            if entry is not None and entry[0].dtype == dtype:
                found[text] = entry
        missing = [text for text in unique if text not in found]
        if missing:
            features, mask = self._encode_texts(missing)
            for i, text in enumerate(missing):
                found[text] = (features[i], mask[i])
                cache.store(key, text, features[i], mask[i], evict=False)
            cache.evict()
        with torch.inference_mode():
            # An inference tensor, as freshly encoded features are: compiled heads
            # (`compile_heads`) guard on that, and would compile again for cached prompts.
            features = torch.stack([found[text][0].to(device) for text in texts])
        mask = torch.stack([found[text][1].to(device) for text in texts])
        return features, mask

    def preprocess(self, rgb: np.ndarray) -> Any:
        """(H, W, 3) uint8 RGB -> (1, 3, S, S) pixel values on the model's device and dtype."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InvalidImageError(
                f"model input must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        if self._device_preprocessor is not None:
            return self._device_preprocessor(rgb)
        ignore_read_only_warning(rgb)
        # channels_last said, not guessed: a frame 1 or 3 pixels tall was read as (C, H, W).
        inputs = self.loaded.processor.image_processor(images=rgb, return_tensors="pt",
                                                       input_data_format="channels_last")
        return inputs["pixel_values"].to(self.loaded.device, self.loaded.dtype)

    def segment(
        self,
        rgb: np.ndarray,
        prompts: EncodedPrompts,
        config: SegmenterConfig,
        frame_key: Hashable | None = None,
        pixel_values: Any = None,
    ) -> Detections:
        """Detect and segment every instance of every prompt in one image.

        Args:
            rgb: (H, W, 3) uint8 RGB image.
            prompts: Encoded prompt set (`encode_prompts`).
            config: Thresholds and limits.
            frame_key: Identifies the frame for the shared vision-feature cache.
            pixel_values: `preprocess(rgb)` when the caller (the runtime) already ran it.

        Returns:
            Detections with full-size masks, sorted by descending score, at most
            `config.detection_limit(H, W)`; class_ids index `prompts.specs`.

        Raises:
            InvalidImageError: the image is not (H, W, 3) uint8.

        Exemplar boxes are clipped to this image; one entirely outside it is ignored on this
        frame (the prompt set was checked against an earlier frame's size, if any).
        """
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        if pixel_values is None:
            with self._stage("preprocess"):
                pixel_values = self.preprocess(rgb)
        with self._stage("backbone"):
            vision_embeds = self.feature_cache.get(frame_key, pixel_values)
        return self.segment_features(vision_embeds, prompts, config, height, width)

    def segment_features(self, vision_embeds: Any, prompts: EncodedPrompts,
                         config: SegmenterConfig, height: int, width: int) -> Detections:
        """`segment` from already computed vision features of a (height x width) image."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        detector = self.loaded.detector
        scores, boxes, low_res_masks, class_ids = [], [], [], []
        specs = prompts.specs
        # transformers runs the geometry encoder (which adds its CLS token to the prompt) only
        # when boxes are given: prompts without boxes on this frame are decoded in batches of
        # their own, so a prompt's result never depends on its batch-mates. A box-only prompt
        # whose boxes all fall outside this frame asks for nothing here.
        packed = exemplar_arrays(specs, (height, width))
        with_boxes = (packed[1] != -10).any(axis=1) if packed is not None else np.zeros(
            len(specs), bool)
        text_only = [i for i, spec in enumerate(specs) if not with_boxes[i] and spec.text]
        boxed = np.flatnonzero(with_boxes).tolist()
        with torch.inference_mode(), self._stage("heads"):
            for group in (text_only, boxed):
                for start in range(0, len(group), config.prompts_per_batch):
                    members = group[start:start + config.prompts_per_batch]
                    first, batch = members[0], len(members)
                    # A contiguous run (the usual case) is a view, not a gather.
                    rows: Any = (slice(first, first + batch)
                                 if members[-1] - first == batch - 1 else members)
                    kwargs: dict[str, Any] = {}
                    if group is boxed:
                        # This batch's rows of the frame's packing, as wide as its own
                        # largest exemplar count (what packing the batch alone gives).
                        width_k = max(len(specs[i].exemplars) for i in members)
                        kwargs.update(self._box_inputs(packed[0][members, :width_k],
                                                       packed[1][members, :width_k],
                                                       height, width))
                    outputs = detector(
                        vision_embeds=_expand_batch(vision_embeds, batch),
                        text_embeds=BaseModelOutputWithPooling(
                            pooler_output=prompts.text_features[rows]),
                        attention_mask=prompts.attention_mask[rows],
                        **kwargs,
                    )
                    # The same arithmetic as Sam3ImageProcessor.post_process_instance_
                    # segmentation (bit-exact, tested), but masks are upsampled only for the
                    # instances kept after the max_detections cut, in one call, and binarised
                    # straight to bool.
                    query_scores = outputs.pred_logits.sigmoid()
                    if outputs.presence_logits is not None:
                        query_scores = query_scores * outputs.presence_logits.sigmoid()
                    # One nonzero (one device sync on CUDA) per batch, shared by the four
                    # selections (each boolean-mask index is a nonzero of its own); the same
                    # elements in the same order.
                    rows_kept, queries_kept = torch.nonzero(
                        query_scores > config.score_threshold, as_tuple=True)
                    scores.append(query_scores[rows_kept, queries_kept])
                    boxes.append(outputs.pred_boxes[rows_kept, queries_kept])
                    # sigmoid over the whole tensor, as the reference does: over a subset,
                    # torch's CPU kernel splits the work differently between threads and a
                    # few values differed in the last ulp (7 threads), which can flip a pixel
                    # at the mask threshold. (At full size it costs ~32 ms per prompt on this
                    # CPU, against seconds of backbone.)
                    low_res_masks.append(outputs.pred_masks.sigmoid()[rows_kept, queries_kept])
                    prompt_index = torch.tensor(members, dtype=torch.int32,
                                                device=rows_kept.device)
                    class_ids.append(prompt_index[rows_kept])
            if not scores:
                return Detections.empty(height, width)
            all_scores = torch.cat(scores)
            if all_scores.numel() == 0:
                return Detections.empty(height, width)
            all_ids = torch.cat(class_ids)
            if text_only and boxed:
                # Equal scores keep prompt order, as with one batch in prompt order: sort by
                # prompt first (stable), then by score (stable).
                by_prompt = torch.argsort(all_ids, stable=True)
                order = by_prompt[torch.argsort(all_scores[by_prompt], descending=True,
                                                stable=True)]
            else:
                order = torch.argsort(all_scores, descending=True, stable=True)
            order = order[: config.detection_limit(height, width)]
            # In float32 whatever the model's dtype: bfloat16 steps by 8 between 1024 and 2048
            # px. Clipped to the image: SAM3's boxes are a centre and a size each in (0, 1),
            # so an object cut by the frame's edge gets corners outside it (transformers'
            # post-processing keeps them; a consumer's crop with a negative index wraps).
            scale = torch.tensor([width, height, width, height], dtype=torch.float32,
                                 device=all_scores.device)
            xyxy = torch.cat(boxes)[order].float() * scale
            xyxy[:, 0::2].clamp_(0, width)
            xyxy[:, 1::2].clamp_(0, height)
        with torch.inference_mode(), self._stage("masks"):
            masks = upsample_masks(torch.cat(low_res_masks)[order], height, width,
                                   config.mask_threshold)
            ids = all_ids[order].cpu().numpy()
            labels = prompts.labels
            return Detections(
                xyxy=xyxy.cpu().numpy(),
                scores=all_scores[order].float().cpu().numpy(),
                class_ids=ids,
                image_height_px=height,
                image_width_px=width,
                masks=masks,
                labels=tuple(labels[i] for i in ids),
            )

    def _box_inputs(self, boxes_xyxy: np.ndarray, labels: np.ndarray, height: int,
                    width: int) -> dict[str, Any]:
        # SAM3's geometry encoder takes boxes normalised to [0, 1] as (cx, cy, w, h).
        import torch

        scale = np.array([width, height, width, height], np.float32)
        xyxy = boxes_xyxy / scale
        cxcywh = np.concatenate(
            [(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], axis=-1)
        cxcywh[labels == -10] = 0.0
        return {
            "input_boxes": torch.from_numpy(cxcywh).to(self.loaded.device, self.loaded.dtype),
            "input_boxes_labels": torch.from_numpy(labels).to(self.loaded.device),
        }


KEEP: Any = object()
"""`SegmenterSession.update`'s default for the tracker: keep the current one (None is a
valid value: no tracking)."""


class SegmenterSession:
    """State of one camera stream for the segmenter: the live prompt set and, optionally,
    ByteTrack ids with the stamp of the last tracked frame.

    Prompt changes (services, parameters) and frames may come from different threads: a new
    prompt set is validated and encoded first (or read from the segmenter's text cache) and
    then swapped in atomically, so a frame in
    flight finishes with the set it started with. Track state is only touched on the compute
    thread (frames, `set_prompts`, `reset`, `set_tracker` all run there).

    Args:
        segmenter: The stateless backend.
        config: Thresholds and limits.
        prompts: The initial prompt set.
        tracker: ByteTrack for persistent ids across frames; None publishes detection order.
    """

    def __init__(self, segmenter: Sam3Segmenter, config: SegmenterConfig,
                 prompts: Sequence[PromptSpec], tracker: ByteTracker | None = None):
        self.segmenter = segmenter
        self.config = config
        self._tracker = tracker
        self._last_stamp_ns: int | None = None
        self._lock = threading.Lock()
        self._generation = 0
        self._image_size_hw: tuple[int, int] | None = None
        self._prompts = self._encode(prompts, config.max_prompts)
        self.frames_at_mask_memory_cap = 0
        """Frames whose instances were cut to `max_mask_memory_mb` before `max_detections`
        (more may have scored above the threshold)."""

    @property
    def prompts(self) -> EncodedPrompts:
        return self._prompts

    def _encode(self, prompts: Sequence[PromptSpec], max_prompts: int,
                generation: int = 0) -> EncodedPrompts:
        specs = validate_prompts(prompts, max_prompts, self._image_size_hw)
        return self.segmenter.encode_prompts(specs, generation=generation)

    def set_prompts(self, prompts: Sequence[PromptSpec]) -> list[int]:
        """Replace the prompt set; returns the class id of each prompt (its index).

        Raises:
            InvalidPromptError: the set is invalid; the previous set stays active.
        """
        self.update(prompts=prompts)
        return list(range(len(prompts)))  # validated: one class per prompt

    def set_config(self, config: SegmenterConfig) -> None:
        """Replace thresholds and limits (see `update`)."""
        self.update(config=config)

    def update(self, prompts: Sequence[PromptSpec] | None = None,
               config: SegmenterConfig | None = None, tracker: Any = KEEP) -> None:
        """Apply a new prompt set, configuration and ByteTrack together, or none of them.

        One parameter call may change several of them; applying them one by one left the
        earlier ones in place when a later one was refused (a refused call must change
        nothing). Everything is validated, and the prompts encoded, before anything is
        swapped in.

        Args:
            prompts: The new prompt set (validated against the new `max_prompts`); None keeps.
            config: New thresholds and limits; None keeps.
            tracker: New ByteTrack (None = no tracking); `KEEP` keeps. New prompts or a new
                tracker restart the ids (class ids changed meaning).

        Raises:
            InvalidPromptError: the prompt set is invalid.
            ConfigError: `max_prompts` is below the prompts that would be active.
        """
        config = self.config if config is None else config
        with self._lock:
            encoded = None
            if prompts is not None:
                encoded = self._encode(prompts, config.max_prompts, self._generation + 1)
            count = len((self._prompts if encoded is None else encoded).specs)
            if config.max_prompts < count:
                raise ConfigError(f"max_prompts {config.max_prompts} is below the {count} "
                                  "prompts now active")
            if encoded is not None:
                self._generation += 1
                self._prompts = encoded
            self.config = config
        if tracker is not KEEP:
            self.set_tracker(tracker)
        elif encoded is not None:
            self.reset_tracks()

    def set_tracker(self, tracker: ByteTracker | None) -> None:
        """Replace ByteTrack (new settings); ids restart."""
        self._tracker = tracker
        self._last_stamp_ns = None

    def reset_tracks(self) -> None:
        """Forget every track: ids restart at 0."""
        if self._tracker is not None:
            self._tracker.reset()
        self._last_stamp_ns = None

    def process(self, rgb: np.ndarray, frame_key: Hashable | None = None,
                stamp_ns: int | None = None, pixel_values: Any = None,
                track: bool = True) -> tuple[Detections, EncodedPrompts]:
        """Segment one frame with the current prompts (see `Sam3Segmenter.segment`).

        Args:
            rgb: (H, W, 3) uint8 RGB.
            frame_key: The frame's key in the shared vision-feature cache.
            stamp_ns: The frame's stamp; the gap to the previous tracked frame lets
                ByteTrack's motion model skip frames that were dropped.
            pixel_values: Already preprocessed frame (the runtime's), else computed here.
            track: Apply ByteTrack (False for a warm-up frame outside the stream).

        Returns:
            The detections (with track ids when a tracker is set) and the prompt set that
            produced them (labels, generation).
        """
        prompts, config = self._prompts, self.config
        detections = self.segmenter.segment(rgb, prompts, config, frame_key, pixel_values)
        self._image_size_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        limit = config.detection_limit(*self._image_size_hw)
        if track and limit < config.max_detections and len(detections) == limit:
            self.frames_at_mask_memory_cap += 1  # stream frames only, not a warm-up
        tracker = self._tracker
        if tracker is not None and track:
            last = self._last_stamp_ns
            dt_s = None
            if stamp_ns is not None:
                self._last_stamp_ns = stamp_ns
                if last is not None and stamp_ns > last:
                    dt_s = (stamp_ns - last) * 1e-9
            detections = tracker.update(detections, dt_s=dt_s)
        return detections, prompts

    def reset(self) -> None:
        """Forget per-stream observations (image size, tracks); the prompt set stays."""
        self._image_size_hw = None
        self.reset_tracks()
        self.segmenter.feature_cache.clear()

"""One loaded model per process, shared by every node that asks for the same checkpoint."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam3_ros.core.backbone import (
    backend_options,
    create_backbone,
    prepare_backbone,
    release_torch_vit,
)
from sam3_ros.core.errors import ModelLoadError
from sam3_ros.core.heads_compile import compile_heads, prepare_heads
from sam3_ros.core.model_loading import LoadedSam3, load_sam3, trim_heap
from sam3_ros.core.vision_features import VisionFeatureCache


@dataclass(frozen=True)
class ModelKey:
    """What identifies a loaded model: checkpoint, device, dtype, quantisation and backbone.

    `backend_options` are (name, value) pairs, sorted, so the key stays hashable.
    `compile_heads`: the detector's DETR encoder and mask decoder are `torch.compile`d (see
    `heads_compile`), whatever the backend.
    """

    source: str
    device: str
    dtype: str
    quantization: str
    backend: str = "torch"
    backend_options: tuple[tuple[str, object], ...] = ()
    compile_heads: bool = False

    @classmethod
    def from_params(cls, param: Callable[[str], Any]) -> ModelKey:
        """The key a node's parameters name (model, device, dtype, quantization, backend and
        the backend's own parameters, e.g. onnx_* for onnxruntime)."""
        backend = param("backend")
        return cls(model_source(str(param("model"))), device_key(str(param("device"))),
                   param("dtype"), param("quantization"), backend,
                   backend_options(backend, param), bool(param("compile_heads")))


def model_source(model: str) -> str:
    """A `model` parameter as the model key holds it: one checkpoint, one spelling.

    An existing folder by its real path ('~/ckpt', '/home/me/ckpt/', a link to it: one load,
    not two); another path normalised ('/data/ckpt/' is '/data/ckpt'); a hub id as given
    (normpath would turn './ckpt' into 'ckpt', which reads as a hub id).
    """
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.realpath(expanded)
    return os.path.normpath(expanded) if model.startswith(("/", "~")) else model


def device_key(device: str) -> str:
    """A `device` parameter as the model key holds it: the device it resolves to ('auto' and
    'cpu' on a machine without CUDA, 'cuda' and 'cuda:0' are one device: one load). A device
    that cannot resolve stays as given: loading it fails with the reason."""
    from sam3_ros.core.model_loading import resolve_device

    try:
        resolved = resolve_device(device)
    except ModelLoadError:
        return device
    if resolved.type == "cuda" and resolved.index is None:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return str(resolved)


class SharedModel:
    """A loaded checkpoint, its vision backbone and the feature cache its users share.

    Args:
        max_batch: Most frames one backbone pass can get (the batch sizes `prepare` compiles
            are 1..min(max_batch, feature_capacity), the runtime's limit).

    Raises:
        ModelLoadError: the backbone backend cannot run here (no fallback to another one).
    """

    def __init__(self, key: ModelKey, loaded: LoadedSam3, feature_capacity: int = 4,
                 max_batch: int = 1):
        self.key = key
        self.loaded = loaded
        self.backbone = create_backbone(key.backend, loaded, dict(key.backend_options))
        self.released_bytes = 0
        """Bytes of torch weights freed because another backend replaces them."""
        if self.backbone.name != "torch":
            # This load serves this backend only (the backend is part of the key).
            self.released_bytes = release_torch_vit(loaded.detector, key.backend)
            # The export's graphs hold the released weights in reference cycles: collected
            # now, not at some later frame, so the heap below can go back to the OS.
            gc.collect()
        # Creating a backend other than torch frees gigabytes (the released torch ViT, the
        # export's intermediate graphs): without this they stay resident in the allocator.
        trim_heap()
        self.feature_cache = VisionFeatureCache(self.backbone, capacity=feature_capacity)
        self.batch_sizes = tuple(range(1, max(1, min(max_batch, feature_capacity)) + 1))
        """Backbone batch sizes this model can see (prepared during configure)."""
        self.heads_prepared = False
        """Whether `prepare` compiled the detector heads (`compile_heads`)."""
        if key.compile_heads:
            compile_heads(loaded.detector)

    def release(self) -> None:
        """Drop every reference to the weights, then free them (GPU memory included).

        The backbone and the feature cache (features, position encodings) hold the detector
        and device tensors: with them alive, `LoadedSam3.release`'s `empty_cache` found the
        weights still referenced and the GPU memory stayed reserved.
        """
        self.feature_cache.release()
        self.backbone = None
        self.loaded.release()

    def prepare(self, log: Callable[[str], None] | None = None) -> None:
        """Do the slow first-call work now: the backbone's (`torch_compile`: compile every
        batch size in `batch_sizes`) and, with `compile_heads`, the heads' for every prompt
        shape (one backbone pass on a blank frame feeds them); a no-op when done before or
        when there is none. Call on the compute thread, during configure.

        Raises:
            ModelLoadError: compilation failed, with the reason.
        """
        prepare_backbone(self.backbone, self.batch_sizes, log)
        if self.key.compile_heads and not self.heads_prepared:
            self._prepare_heads(log)
        trim_heap()  # compilation's own garbage

    def _prepare_heads(self, log: Callable[[str], None] | None) -> None:
        from sam3_ros.core.segmenter import Sam3Segmenter

        # The segmenter's own path (its preprocessing, this model's feature cache), so the
        # heads' inputs are made as a streamed frame's are; the frame is not cached.
        segmenter = Sam3Segmenter(self.loaded, self.feature_cache)
        size = segmenter.model_image_size
        blank = np.zeros((size, size, 3), np.uint8)
        vision_embeds = self.feature_cache.get(None, segmenter.preprocess(blank))
        prepare_heads(segmenter, vision_embeds, size, log)
        self.heads_prepared = True


class ModelHub:
    """Loads each checkpoint once and hands it to every node that asks (reference counted).

    A standalone node owns a private hub. The `pipeline` executable gives all its nodes one hub
    with `with_tracker=True`, so the segmenter and the tracker run on the same weights (the
    video model's detector is the segmenter's model) and share each frame's backbone features.

    Args:
        with_tracker: Always load the video model (detector + tracker), even for a segmenter.
        feature_capacity: Frames whose backbone features each model keeps (at least the
            runtime's `max_batch`, so one batched pass serves every camera of a cycle; in
            `pipeline` also two per camera when a segmenter and a tracker read it).
        max_batch: Most distinct frames one backbone pass of a model can get: 1 for a node's
            private hub (one camera), min(runtime max_batch, node kinds x cameras) for
            `pipeline` (a lagging tracker's frame and the segmenter's newer one can share a
            pass). With `torch_compile` these batch sizes are compiled during configure.
    """

    def __init__(self, with_tracker: bool = False, feature_capacity: int = 4,
                 max_batch: int = 1):
        self._with_tracker = with_tracker
        self._feature_capacity = feature_capacity
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._models: dict[ModelKey, tuple[SharedModel, int]] = {}
        self.loads = 0
        """How many times a checkpoint was actually loaded (for tests and benchmarks)."""

    def acquire(self, key: ModelKey, with_tracker: bool = False) -> SharedModel:
        """The model for `key`, loading it on first use.

        Raises:
            ModelLoadError: loading failed, or a node needs the tracker from a hub that loaded
                the detector only.
        """
        with self._lock:
            if key in self._models:
                shared, users = self._models[key]
                if with_tracker and shared.loaded.video_model is None:
                    raise ModelLoadError("this process loaded the detector only; the tracker "
                                         "needs the video model (use one ModelHub with "
                                         "with_tracker=True)")
                self._models[key] = (shared, users + 1)
                return shared
            loaded = load_sam3(key.source, device=key.device, dtype=key.dtype,
                               with_tracker=with_tracker or self._with_tracker,
                               quantization=key.quantization)
            self.loads += 1
            try:
                shared = SharedModel(key, loaded, self._feature_capacity, self._max_batch)
            except BaseException:
                loaded.release()
                raise
            self._models[key] = (shared, 1)
            return shared

    def release(self, shared: SharedModel) -> None:
        """Give a model back; the last user's release frees it (GPU memory included)."""
        with self._lock:
            entry = self._models.get(shared.key)
            if entry is None:
                return
            model, users = entry
            if users > 1:
                self._models[shared.key] = (model, users - 1)
                return
            del self._models[shared.key]
            model.release()

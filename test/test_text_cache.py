"""On-disk text-embedding cache: hits skip the text encoder, keys are validated, results equal."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.prompts import BoxExemplar, PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession
from sam3_ros.core.text_cache import TextEmbeddingCache, checkpoint_fingerprint

TEXTS = ["mug", "red cup", "person"]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)


class EncoderCalls:
    """Counts text-encoder runs of a detector (wraps get_text_features on the instance)."""

    def __init__(self, detector, monkeypatch):
        self.count = 0
        original = detector.get_text_features

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(detector, "get_text_features", counted)


def _session(loaded, texts, cache=None) -> SegmenterSession:
    segmenter = Sam3Segmenter(loaded, text_cache=cache)
    specs = [t if isinstance(t, PromptSpec) else PromptSpec(t) for t in texts]
    return SegmenterSession(segmenter, SegmenterConfig(score_threshold=0.0, max_detections=50),
                            specs)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_restart_and_switch_back_run_no_text_encoder(loaded, tmp_path, monkeypatch):
    calls = EncoderCalls(loaded.detector, monkeypatch)
    session = _session(loaded, TEXTS, TextEmbeddingCache(tmp_path))
    assert calls.count == 1 and len(list(tmp_path.glob("*.safetensors"))) == 3
    session.set_prompts([PromptSpec("bottle")])
    assert calls.count == 2
    session.set_prompts([PromptSpec(t) for t in TEXTS[::-1]])  # switch back, other order
    assert calls.count == 2
    # A restart: a new process builds a new cache object on the same folder.
    restarted = _session(loaded, [*TEXTS, "bottle"], TextEmbeddingCache(tmp_path))
    assert calls.count == 2
    assert restarted.segmenter.text_cache.hits == 4
    # Only the new text of a set is encoded.
    restarted.set_prompts([PromptSpec("mug"), PromptSpec("chair")])
    assert calls.count == 3 and restarted.segmenter.text_encoder_runs == 1


def test_results_with_the_cache_equal_results_without_it(loaded, tmp_path, image):
    plain = _session(loaded, TEXTS)
    cold = _session(loaded, TEXTS, TextEmbeddingCache(tmp_path))
    warm = _session(loaded, TEXTS, TextEmbeddingCache(tmp_path))
    assert warm.segmenter.text_encoder_runs == 0
    for session in (cold, warm):
        assert torch.equal(session.prompts.text_features, plain.prompts.text_features)
        assert torch.equal(session.prompts.attention_mask, plain.prompts.attention_mask)
    reference, _ = plain.process(image)
    assert len(reference) > 0
    for session in (cold, warm):
        _assert_same(session.process(image)[0], reference)
    # A subset read back from entries written with a larger batch.
    subset = _session(loaded, ["person", "mug"], TextEmbeddingCache(tmp_path))
    assert subset.segmenter.text_encoder_runs == 0
    _assert_same(subset.process(image)[0], _session(loaded, ["person", "mug"]).process(image)[0])
    # Box-only prompts share one model text ("visual"): encoded once, results equal.
    boxes = [PromptSpec("", (BoxExemplar(10, 12, 70, 60, True),)), PromptSpec("mug"),
             PromptSpec("", (BoxExemplar(5, 5, 40, 30, True),))]
    cached = _session(loaded, boxes, TextEmbeddingCache(tmp_path))
    _assert_same(cached.process(image)[0], _session(loaded, boxes).process(image)[0])


def test_other_checkpoint_rebuilds(loaded, tmp_path, tmp_path_factory, monkeypatch):
    from sam3_ros.tools.make_tiny_checkpoint import make_tiny_checkpoint

    _session(loaded, TEXTS, TextEmbeddingCache(tmp_path))
    other = load_sam3(str(make_tiny_checkpoint(tmp_path_factory.mktemp("other"), seed=1)))
    calls = EncoderCalls(other.detector, monkeypatch)
    session = _session(other, TEXTS, TextEmbeddingCache(tmp_path))
    assert calls.count == 1
    assert torch.equal(session.prompts.text_features, _session(other, TEXTS).prompts.text_features)
    assert len(list(tmp_path.glob("*.safetensors"))) == 6


def test_other_dtype_rebuilds(tiny_checkpoint, loaded, tmp_path, monkeypatch):
    _session(loaded, TEXTS, TextEmbeddingCache(tmp_path))
    bf16 = load_sam3(str(tiny_checkpoint), dtype="bfloat16")
    calls = EncoderCalls(bf16.detector, monkeypatch)
    session = _session(bf16, TEXTS, TextEmbeddingCache(tmp_path))
    assert calls.count == 1 and session.prompts.text_features.dtype == torch.bfloat16
    # And the float32 entries are still there and used.
    assert _session(loaded, TEXTS, TextEmbeddingCache(tmp_path)).segmenter.text_encoder_runs == 0


def test_edited_key_is_not_loaded(loaded, tmp_path):
    from safetensors.torch import load_file, save_file

    cache = TextEmbeddingCache(tmp_path)
    reference = _session(loaded, ["mug"], cache).prompts.text_features
    key = Sam3Segmenter(loaded, text_cache=cache).text_cache_key()
    path = cache.entry_path(key, "mug")
    # Same file name, but the embedded key says another text, and the tensors are wrong.
    tensors = load_file(str(path))
    tensors["text_features"] = torch.zeros_like(tensors["text_features"])
    save_file(tensors, str(path),
              metadata={"sam3_ros_text_cache_key": cache.entry_key(key, "bottle")})
    fresh = TextEmbeddingCache(tmp_path)
    session = _session(loaded, ["mug"], fresh)
    assert session.segmenter.text_encoder_runs == 1 and fresh.rejected == 1
    assert torch.equal(session.prompts.text_features, reference)
    # Rebuilt: the entry is valid again.
    assert _session(loaded, ["mug"], TextEmbeddingCache(tmp_path)).segmenter.text_encoder_runs == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_tensors"])
def test_corrupt_entry_is_ignored_with_a_warning(loaded, tmp_path, caplog, damage):
    from safetensors.torch import save_file

    cache = TextEmbeddingCache(tmp_path)
    reference = _session(loaded, ["mug"], cache).prompts.text_features
    key = Sam3Segmenter(loaded, text_cache=cache).text_cache_key()
    path = cache.entry_path(key, "mug")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        save_file({"text_features": torch.zeros(3)}, str(path),
                  metadata={"sam3_ros_text_cache_key": cache.entry_key(key, "mug")})
    with caplog.at_level(logging.WARNING, logger="sam3_ros.core.text_cache"):
        session = _session(loaded, ["mug"], TextEmbeddingCache(tmp_path))
    assert session.segmenter.text_encoder_runs == 1
    assert "ignoring unreadable entry" in caplog.text
    assert torch.equal(session.prompts.text_features, reference)
    assert _session(loaded, ["mug"], TextEmbeddingCache(tmp_path)).segmenter.text_encoder_runs == 0


def test_directory_is_bounded_oldest_evicted_first(tmp_path):
    key = {"checkpoint_sha256": "x"}
    cache = TextEmbeddingCache(tmp_path, max_entries=3)
    features, mask = torch.ones(32, 8), torch.ones(32, dtype=torch.int64)
    for i, text in enumerate("abcde"):
        cache.store(key, text, features, mask)
        os.utime(cache.entry_path(key, text), (1000 + i, 1000 + i))
    assert len(cache.entries()) == 3
    assert cache.load(key, "a") is None and cache.load(key, "b") is None
    assert cache.load(key, "c") is not None  # a hit marks it recently used
    cache.store(key, "f", features, mask)
    assert {p.name for p in cache.entries()} == {
        cache.entry_path(key, t).name for t in ("c", "e", "f")}
    # The byte bound.
    size = cache.entry_path(key, "f").stat().st_size
    small = TextEmbeddingCache(tmp_path, max_bytes=2 * size)
    small.evict()
    assert len(small.entries()) == 2
    # Writes leave no temporary files behind.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_fingerprint_covers_weights_and_is_hashed_once(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    from sam3_ros.core import text_cache

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    hashed = []
    original = text_cache._file_sha256
    monkeypatch.setattr(text_cache, "_file_sha256", lambda p: hashed.append(p) or original(p))
    first = TextEmbeddingCache(tmp_path / "cache").fingerprint(folder)
    assert first == checkpoint_fingerprint(folder)
    n_files = len(hashed)
    assert any(p.name == "model.safetensors" for p in hashed)
    # A restart (new cache object) re-hashes nothing: file digests are remembered by stat.
    hashed.clear()
    assert TextEmbeddingCache(tmp_path / "cache").fingerprint(folder) == first
    assert hashed == []
    # Changed weights change the fingerprint.
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert TextEmbeddingCache(tmp_path / "cache").fingerprint(folder) != first
    assert n_files >= 3


def test_tracker_prompts_go_through_the_same_cache(tiny_checkpoint, loaded, tmp_path,
                                                   monkeypatch):
    from sam3_ros.core.tracker import TrackerConfig, TrackerSession

    _session(loaded, TEXTS, TextEmbeddingCache(tmp_path))
    video = load_sam3(str(tiny_checkpoint), with_tracker=True)
    calls = EncoderCalls(video.detector, monkeypatch)
    session = TrackerSession(video, TrackerConfig(), text_cache=TextEmbeddingCache(tmp_path))
    session.set_text_prompts(["person", "mug"])
    assert calls.count == 0
    session.set_text_prompts(["chair"])
    assert calls.count == 1


def test_a_prompt_set_lists_the_folder_once_not_once_per_prompt(loaded, tmp_path,
                                                               monkeypatch):
    """Each eviction lists and stats the whole folder (up to max_entries files): storing
    1024 new prompts made 1024 scans on the compute thread."""
    cache = TextEmbeddingCache(tmp_path, max_entries=2)
    evictions = []
    original = cache.evict
    monkeypatch.setattr(cache, "evict", lambda: evictions.append(1) or original())
    _session(loaded, ["mug", "cup", "fork", "plate"], cache)
    assert len(evictions) == 1
    assert len(cache.entries()) == 2  # and the bound still holds


def test_unwritable_folder_only_warns(loaded, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        session = _session(loaded, ["mug"], TextEmbeddingCache(blocker / "cache"))
    assert session.segmenter.text_encoder_runs == 1
    assert "text cache" in caplog.text
    assert torch.equal(session.prompts.text_features,
                       _session(loaded, ["mug"]).prompts.text_features)


def test_folder_expands_the_home_directory():
    from pathlib import Path

    assert TextEmbeddingCache("~/sam3_text").directory == Path.home() / "sam3_text"


def test_hub_snapshot_weights_are_identified_by_their_blob_name(tiny_checkpoint, tmp_path,
                                                                monkeypatch):
    """A hub id's files sit in the Hugging Face cache as snapshot links to blobs named by their
    sha256: the weights are not re-hashed, and the snapshot is what transformers resolved."""
    import hashlib
    import shutil

    import transformers.utils

    from sam3_ros.core import text_cache
    from sam3_ros.core.model_loading import resolved_checkpoint_dir

    repo = tmp_path / "models--someone--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for item in tiny_checkpoint.iterdir():
        data = item.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        shutil.copy(item, blob)
        (snapshot / item.name).symlink_to(blob)
    monkeypatch.setattr(transformers.utils, "cached_file",
                        lambda repo_id, name, **kw: str(snapshot / name))
    assert resolved_checkpoint_dir("someone/tiny") == snapshot
    hashed = []
    original = text_cache._file_sha256
    monkeypatch.setattr(text_cache, "_file_sha256", lambda p: hashed.append(p) or original(p))
    assert checkpoint_fingerprint(snapshot) == checkpoint_fingerprint(tiny_checkpoint)
    assert hashed and not [p for p in hashed if p.parent.name == "blobs"]  # only the copy


def test_eviction_touches_only_the_caches_own_entries(tiny_checkpoint, tmp_path):
    # text_cache_dir given a checkpoint folder by mistake: its model.safetensors was the
    # oldest file over the byte bound and was deleted first.
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "notes.safetensors").write_bytes(b"user data")
    os.utime(folder / "model.safetensors", (1, 1))
    before = {p.name: p.stat().st_size for p in folder.iterdir()}
    cache = TextEmbeddingCache(folder, max_entries=1, max_bytes=1)
    cache.store({"checkpoint_sha256": "x"}, "mug", torch.ones(32, 8),
                torch.ones(32, dtype=torch.int64))
    after = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert {n: s for n, s in after.items() if n in before} == before
    assert cache.entries() == [] or all(TextEmbeddingCache.is_entry(p) for p in cache.entries())


def test_a_full_disk_only_warns(tmp_path, monkeypatch, caplog):
    # safetensors raises its own error (not an OSError) when the disk is full: set_prompts
    # answered "internal error" and configure failed.
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cache = TextEmbeddingCache(tmp_path)
    with caplog.at_level(logging.WARNING):
        cache.store({"checkpoint_sha256": "x"}, "mug", torch.ones(32, 8),
                    torch.ones(32, dtype=torch.int64))
    assert "No space left" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_damaged_digest_memo_is_recomputed_and_failed_writes_leave_no_files(tiny_checkpoint,
                                                                           tmp_path):
    import json

    from sam3_ros.core.text_cache import checkpoint_fingerprint

    cache = TextEmbeddingCache(tmp_path / "cache")
    expected = checkpoint_fingerprint(tiny_checkpoint)
    assert cache.fingerprint(tiny_checkpoint) == expected
    memo_path = tmp_path / "cache" / "file_digests.json"
    memo = json.loads(memo_path.read_text())
    for entry in memo.values():
        del entry["sha256"]  # a damaged memo raised KeyError and failed configure
    memo_path.write_text(json.dumps(memo))
    assert TextEmbeddingCache(tmp_path / "cache").fingerprint(tiny_checkpoint) == expected
    memo_path.unlink()
    memo_path.mkdir()  # the memo cannot be written: warned, and no temporary files pile up
    for _ in range(3):
        assert TextEmbeddingCache(tmp_path / "cache").fingerprint(tiny_checkpoint) == expected
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]


def test_checkpoint_files_replaced_after_loading_turn_the_cache_off(tiny_checkpoint, tmp_path,
                                                                   caplog):
    # The hash was computed at the first prompt encoding, after loading: embeddings of the
    # weights in memory were stored under the key of the files that replaced them.
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    model = load_sam3(str(folder))
    assert model.checkpoint_stamps is not None
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # new file contents (and mtime) after loading
    with caplog.at_level(logging.WARNING):
        session = _session(model, ["mug"], TextEmbeddingCache(tmp_path / "cache"))
    assert "changed after it was loaded" in caplog.text
    assert session.segmenter.text_cache is None
    assert not list((tmp_path / "cache").glob("*.safetensors"))


def test_a_cache_in_the_checkpoint_folder_leaves_its_fingerprint_alone(tiny_checkpoint,
                                                                       tmp_path):
    # Each stored entry (and the digest memo) counted as a checkpoint file: no hit after a
    # restart, and the ONNX backend's artifact turned into "another checkpoint's".
    import shutil

    from sam3_ros.core.onnx_backbone import checkpoint_hash

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    fingerprint, onnx_hash = checkpoint_fingerprint(folder), checkpoint_hash(str(folder))
    cache = TextEmbeddingCache(folder)
    assert cache.fingerprint(folder) == fingerprint
    cache.store({"checkpoint_sha256": fingerprint}, "mug", torch.ones(32, 8),
                torch.ones(32, dtype=torch.int64))
    assert len(cache.entries()) == 1 and (folder / "file_digests.json").is_file()
    assert checkpoint_fingerprint(folder) == fingerprint
    assert checkpoint_hash(str(folder)) == onnx_hash


def test_cache_files_get_the_mode_of_a_plain_open(tiny_checkpoint, tmp_path):
    # mkstemp's 0600: a folder shared by a service user and a developer was unreadable to
    # the other one, who then overwrote every entry with an owner-only file of its own.
    previous = os.umask(0o027)  # not the fallback's 0o022: the process's umask is read
    try:
        cache = TextEmbeddingCache(tmp_path)
        cache.store({"checkpoint_sha256": "x"}, "mug", torch.ones(32, 8),
                    torch.ones(32, dtype=torch.int64))
        (entry,) = cache.entries()
        assert entry.stat().st_mode & 0o777 == 0o640
        cache.fingerprint(tiny_checkpoint)  # writes the digest memo
        assert (tmp_path / "file_digests.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)

"""On-disk cache of prompt text embeddings, so a restart or a switch back to an earlier prompt
set runs no text encoder.

One file per (model, text): `<sha256 of the key>.safetensors` holding the text encoder's
projected states (32, D) and the attention mask (32,), with the full key embedded in the file's
metadata. The key names everything the embedding depends on: the checkpoint's content hash
(config, tokenizer and weight files), the model class, dtype, device, quantisation, the
tokenizer's length, torch and transformers versions, the exact text and the cache format
version. An entry is used only when its embedded key equals the wanted one; anything else (a
different key, an unreadable or truncated file, unexpected tensors) is ignored, with a warning
for damaged files, and overwritten by a fresh encoding. Writes are atomic (temporary file +
rename), so a crash or a second process never leaves a half-written entry under a valid name.
The folder is bounded: past `max_entries` files or `max_bytes`, the least recently used entries
are deleted.

Pure Python + torch + safetensors: no ROS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CACHE_FORMAT_VERSION = 1
"""Bumped whenever the entry layout or the key changes meaning (old entries are then ignored)."""
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
ENTRY_SUFFIX = ".safetensors"
_METADATA_KEY = "sam3_ros_text_cache_key"
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
"""Files of a checkpoint folder that make up its fingerprint: configs, tokenizer, weights."""
_STALE_TMP_S = 3600.0
_MAX_REMEMBERED_DIGESTS = 256

_log = logging.getLogger(__name__)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class _FileDigests:
    """sha256 of files, remembered per (real path, size, mtime, inode) in a small JSON file,
    so a multi-gigabyte weight file is hashed once per version, not at every start."""

    def __init__(self, memo_path: Path | None):
        self._memo_path = memo_path
        self._lock = threading.Lock()
        self._memo: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._memo is None:
            self._memo = {}
            if self._memo_path is not None:
                try:
                    data = json.loads(self._memo_path.read_text())
                    if isinstance(data, dict):
                        self._memo = data
                except (OSError, ValueError, UnicodeDecodeError):
                    pass
        return self._memo

    def digest(self, path: Path) -> str:
        real = path.resolve()
        # The Hugging Face cache names a large (LFS) file's blob after its sha256.
        if real.parent.name == "blobs" and len(real.name) == 64 and all(
                c in "0123456789abcdef" for c in real.name):
            return real.name
        st = real.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        with self._lock:
            memo = self._load()
            entry = memo.get(str(real))
            if isinstance(entry, dict) and entry.get("stat") == stamp and \
                    isinstance(entry.get("sha256"), str):
                return entry["sha256"]
        sha = _file_sha256(real)
        with self._lock:
            memo = self._load()
            memo.pop(str(real), None)
            memo[str(real)] = {"stat": stamp, "sha256": sha}
            while len(memo) > _MAX_REMEMBERED_DIGESTS:  # oldest first (insertion order)
                memo.pop(next(iter(memo)))
            if self._memo_path is not None:
                _atomic_write_text(self._memo_path, json.dumps(memo))
        return sha


def process_umask() -> int:
    """The process's umask, read without changing it (`os.umask` sets it process-wide for a
    moment: another thread's file created then would get the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def plain_file_mode() -> int:
    """The mode a plain `open` gives a new file, for `mkstemp` files (0600) renamed into
    place: a cache folder shared by a service user and a developer was unreadable to the
    other, who overwrote every entry."""
    return 0o666 & ~process_umask()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        os.fchmod(fd, plain_file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _log.warning("text cache: cannot write %s: %s", path, err)


DIGESTS_FILE = "file_digests.json"


def is_cache_file(path: Path) -> bool:
    """Whether a file is this cache's own (an entry, its digest memo, a temporary file):
    never part of a checkpoint, even with the cache folder set to the checkpoint's."""
    return (TextEmbeddingCache.is_entry(path) or path.name == DIGESTS_FILE
            or path.name.startswith(".tmp-"))


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that its fingerprint covers (sorted by name).

    The text cache's own files are left out: with `text_cache_dir` set to the checkpoint's
    folder, each stored entry changed the checkpoint's fingerprint (no hit after a restart,
    an ONNX artifact of "another checkpoint").
    """
    return sorted(p for p in folder.iterdir()
                  if p.suffix in _FINGERPRINT_SUFFIXES and p.is_file() and not is_cache_file(p))


def checkpoint_stamps(folder: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(name, size, mtime ns, inode) of every fingerprinted file: cheap, to tell whether the
    files changed between two moments (e.g. loading and hashing)."""
    stamps = []
    for path in checkpoint_files(folder):
        st = path.stat()
        stamps.append((path.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamps)


def checkpoint_fingerprint(folder: Path, digests: _FileDigests | None = None) -> str:
    """sha256 over the names and contents of a checkpoint folder's config, tokenizer and
    weight files (`checkpoint_files`)."""
    digests = digests or _FileDigests(None)
    outer = hashlib.sha256()
    for path in checkpoint_files(folder):
        outer.update(f"{path.name}\0{digests.digest(path)}\n".encode())
    return outer.hexdigest()


class TextEmbeddingCache:
    """A folder of text embeddings (see the module docstring).

    Args:
        directory: The cache folder (created on first write).
        max_entries: Most entry files kept.
        max_bytes: Most bytes of entry files kept.

    Thread-safe; several processes may share one folder (atomic renames; the loser of a race
    rewrites an identical entry).
    """

    def __init__(self, directory: str | Path, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be >= 1")
        self.directory = Path(directory).expanduser()
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._digests = _FileDigests(self.directory / DIGESTS_FILE)
        self._fingerprints: dict[str, str] = {}
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        """Entries found under the wanted name but not used (other key, damaged file)."""

    # ------------------------------------------------------------------------------- keys
    def fingerprint(self, folder: str | Path) -> str:
        """`checkpoint_fingerprint` of a folder, computed once per cache object."""
        folder = str(Path(folder).resolve())
        with self._lock:
            known = self._fingerprints.get(folder)
        if known is None:
            with contextlib.suppress(OSError):  # an unwritable folder: warned on write
                self.directory.mkdir(parents=True, exist_ok=True)
            known = checkpoint_fingerprint(Path(folder), self._digests)
            with self._lock:
                self._fingerprints[folder] = known
        return known

    @staticmethod
    def entry_key(model_key: dict[str, Any], text: str) -> str:
        """The canonical key string of one entry (stored in the file, compared on load)."""
        return json.dumps({"format": CACHE_FORMAT_VERSION, "model": model_key, "text": text},
                          sort_keys=True, ensure_ascii=True)

    def entry_path(self, model_key: dict[str, Any], text: str) -> Path:
        name = hashlib.sha256(self.entry_key(model_key, text).encode()).hexdigest()[:40]
        return self.directory / f"{name}{ENTRY_SUFFIX}"

    @staticmethod
    def is_entry(path: Path) -> bool:
        """Whether a file is one of this cache's entries: 40 hex digits + the suffix. Other
        files (a checkpoint's model.safetensors in a folder given by mistake) are never
        touched."""
        stem = path.name[:-len(ENTRY_SUFFIX)] if path.name.endswith(ENTRY_SUFFIX) else ""
        return len(stem) == 40 and all(c in "0123456789abcdef" for c in stem)

    # ---------------------------------------------------------------------------- entries
    def load(self, model_key: dict[str, Any], text: str) -> tuple[Any, Any] | None:
        """The cached (features (T, D), attention_mask (T,)) CPU tensors, or None."""
        from safetensors import safe_open

        path = self.entry_path(model_key, text)
        if not path.is_file():
            with self._lock:
                self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                stored_key = (f.metadata() or {}).get(_METADATA_KEY)
                if stored_key != self.entry_key(model_key, text):
                    with self._lock:
                        self.rejected += 1
                        self.misses += 1
                    return None
                features = f.get_tensor("text_features")
                mask = f.get_tensor("attention_mask")
            if features.ndim != 2 or tuple(mask.shape) != (features.shape[0],):
                raise ValueError(f"unexpected shapes {tuple(features.shape)} / "
                                 f"{tuple(mask.shape)}")
        except Exception as err:
            _log.warning("text cache: ignoring unreadable entry %s: %s", path, err)
            with self._lock:
                self.rejected += 1
                self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used eviction
        with self._lock:
            self.hits += 1
        return features, mask

    def store(self, model_key: dict[str, Any], text: str, features: Any, mask: Any,
              evict: bool = True) -> None:
        """Write one entry atomically, then enforce the bounds (`evict`; a caller storing
        many entries at once evicts once after them: each eviction lists the whole folder).
        Failures only warn."""
        from safetensors.torch import save_file

        path = self.entry_path(model_key, text)
        tensors = {"text_features": features.detach().to("cpu").contiguous(),
                   "attention_mask": mask.detach().to("cpu").contiguous()}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=ENTRY_SUFFIX)
            os.close(fd)
            try:
                save_file(tensors, tmp, metadata={_METADATA_KEY: self.entry_key(model_key, text)})
                # After writing: safetensors creates the file anew (mkstemp's 0600 again).
                os.chmod(tmp, plain_file_mode())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except Exception as err:  # OSError, and safetensors' own error for a full disk
            _log.warning("text cache: cannot write %s: %s", path, err)
            return
        if evict:
            self.evict()

    def entries(self) -> list[Path]:
        try:
            return [p for p in self.directory.iterdir() if self.is_entry(p)]
        except OSError:
            return []

    def evict(self) -> list[Path]:
        """Delete the least recently used entries beyond the bounds (and stale temporary files).

        Returns:
            The deleted entries.
        """
        now = time.time()
        stats: list[tuple[float, int, Path]] = []
        try:
            listing: Iterable[Path] = list(self.directory.iterdir())
        except OSError:
            return []
        for p in listing:
            try:
                st = p.stat()
            except OSError:
                continue
            if p.name.startswith(".tmp-"):
                if now - st.st_mtime > _STALE_TMP_S:
                    p.unlink(missing_ok=True)
            elif self.is_entry(p):
                stats.append((st.st_mtime, st.st_size, p))
        stats.sort(key=lambda s: (s[0], s[2].name))
        total = sum(s[1] for s in stats)
        deleted = []
        while stats and (len(stats) > self.max_entries or total > self.max_bytes):
            _, size, p = stats.pop(0)
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                _log.warning("text cache: cannot delete %s: %s", p, err)
                continue
            total -= size
            deleted.append(p)
        return deleted

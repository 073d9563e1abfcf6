"""Content-addressed on-disk cache of per-utterance feature arrays.

An entry is keyed by everything that produced it: the audio bytes (sha256), the
feature config fingerprint and, for SSL features, the encoder identity. Changing
any of them changes the key, so a stale entry is never returned; it is simply
never asked for again.

Entries live at ``root/<kind>/<key[:2]>/<key>.npz`` (``kind`` is e.g. ``"acoustic"``
or ``"ssl"``). Each file stores its arrays plus a checksum over their names,
dtypes, shapes and bytes. Writes go to a temporary file in the same directory
that is fsynced and then renamed over the entry, so readers see either the old
entry, the new one, or none. An entry that cannot be read or fails its checksum
is logged, deleted and treated as a miss, so it gets recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from msjax.io import npz
from msjax.io.files import atomic_write

log = logging.getLogger(__name__)

# Folded into every key: bump it when the entry format changes so that old
# entries become unreachable instead of misread.
FORMAT_VERSION = "1"

_CHECKSUM = "__checksum__"
_KIND_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def audio_hash(source: str | os.PathLike | bytes) -> str:
    """Returns the sha256 hex digest of an audio file's bytes.

    Args:
        source: a path (read in chunks, never whole) or the bytes themselves.

    Returns:
        64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
        return digest.hexdigest()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def arrays_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """Returns a sha256 over the names, dtypes, shapes and bytes of `arrays`.

    The order of `arrays` does not matter: names are visited sorted.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        # Length-prefixed fields, so that no two different entries hash alike.
        for field in (name, array.dtype.str, repr(array.shape)):
            encoded = field.encode()
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        digest.update(array.nbytes.to_bytes(8, "little"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def params_hash(params: Any) -> str:
    """Returns a sha256 over a parameter tree's leaf paths, dtypes, shapes and values
    (the weights' own identity, whatever they were loaded or initialised from)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return arrays_checksum({jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})


@dataclasses.dataclass
class CacheStats:
    """Counters since the cache was created (or since `reset_stats`)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    corrupt: int = 0


class FeatureCache:
    """A directory of `.npz` feature entries addressed by content keys.

    Args:
        root: the cache directory (created on the first write). None disables
            the cache, as does `enabled=False`.
        enabled: False bypasses every read and write (the `--no_cache` flag):
            `get` always misses, `put` does nothing, `get_or_compute` always
            computes. The disk is never touched.
    """

    def __init__(self, root: Path | None, enabled: bool = True):
        self.root = Path(root) if root is not None else None
        self.enabled = enabled and root is not None
        self.stats = CacheStats()

    def reset_stats(self) -> None:
        """Sets all counters back to zero (e.g. between cold and warm runs)."""
        self.stats = CacheStats()

    @staticmethod
    def key(audio_hash: str, *parts: str) -> str:
        """Combines an audio hash with what produced the features into one key.

        Args:
            audio_hash: `audio_hash()` of the source file.
            *parts: strings identifying the computation, e.g. the feature
                config fingerprint and, for SSL features, the encoder identity.

        Returns:
            A 64-character hex key; any change to an input changes it.
        """
        digest = hashlib.sha256()
        for field in (FORMAT_VERSION, audio_hash, *parts):
            if not isinstance(field, str):
                raise TypeError(f"cache key parts must be str, got {type(field).__name__}")
            encoded = field.encode()
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return digest.hexdigest()

    def path(self, kind: str, key: str) -> Path:
        """Returns where the entry for (kind, key) lives (whether or not it exists)."""
        if self.root is None:
            raise ValueError("this cache has no root directory")
        if not _KIND_RE.match(kind):
            raise ValueError(f"invalid cache kind {kind!r}")
        if not _KEY_RE.match(key):
            raise ValueError(f"invalid cache key {key!r}: expected 64 hex characters")
        return self.root / kind / key[:2] / f"{key}.npz"

    def get(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """Returns the cached arrays, or None on a miss (or a corrupt entry)."""
        if not self.enabled:
            self.stats.misses += 1
            return None
        path = self.path(kind, key)
        arrays = self._read(path)
        if arrays is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return arrays

    def put(self, kind: str, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Stores `arrays` atomically under (kind, key), replacing any old entry.

        Args:
            kind: the feature family, e.g. "acoustic" or "ssl".
            key: from `key()`.
            arrays: names to numeric arrays (no object dtypes; names may not
                start with "__").
        """
        if not self.enabled:
            return
        path = self.path(kind, key)
        payload = _validated(arrays)
        payload[_CHECKSUM] = np.array(arrays_checksum(payload))
        atomic_write(path, lambda f: np.savez(f, **payload), "a feature cache entry")
        self.stats.writes += 1

    def get_or_compute(
        self,
        kind: str,
        key: str,
        fn: Callable[[], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Returns the cached arrays, computing and storing them with `fn()` on a miss."""
        arrays = self.get(kind, key)
        if arrays is not None:
            return arrays
        arrays = _validated(fn())
        self.put(kind, key, arrays)
        return arrays

    def _read(self, path: Path) -> dict[str, np.ndarray] | None:
        """Loads and verifies one entry; deletes it if it is damaged."""
        try:
            arrays = npz.load(path)
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed
            self._discard(path, f"unreadable ({type(e).__name__}: {e})")
            return None
        stored = arrays.pop(_CHECKSUM, None)
        if stored is None or stored.shape != () or stored.dtype.kind != "U":
            self._discard(path, "no checksum")
            return None
        if str(stored) != arrays_checksum(arrays):
            self._discard(path, "checksum mismatch")
            return None
        return arrays

    def _discard(self, path: Path, why: str) -> None:
        log.warning("cache entry %s is corrupt (%s); deleting it and recomputing", path, why)
        self.stats.corrupt += 1
        path.unlink(missing_ok=True)


def _validated(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checks that `arrays` can be stored and read back without pickling."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"cache entries must be a mapping of arrays, got {type(arrays).__name__}")
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"invalid cache array name {name!r}")
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"cache array {name!r} has object dtype; only numeric arrays")
        out[name] = array
    return out

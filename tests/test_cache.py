"""Tests for the content-addressed feature cache."""

import hashlib
import os
import threading

import numpy as np
import pytest

from msjax.errors import WriteError
from msjax.features import cache as cache_lib
from msjax.features.cache import FeatureCache, audio_hash


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "mfcc": rng.standard_normal((7, 40)).astype(np.float32),
        "spec": rng.standard_normal((200, 7)).astype(np.float32),
        "n": np.array(7, dtype=np.int64),
    }


class _Counter:
    """A compute function that counts its calls."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.arrays


def _key(cache, config="cfg-a"):
    return cache.key("ab" * 32, config)


def _entry_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _assert_equal(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def test_audio_hash_matches_sha256_of_bytes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert audio_hash(path) == want
    assert audio_hash(str(path)) == want
    assert audio_hash(data) == want


def test_key_depends_on_every_part():
    h = "ab" * 32
    base = FeatureCache.key(h, "cfg", "enc")
    assert len(base) == 64 and int(base, 16) >= 0
    assert FeatureCache.key(h, "cfg", "enc") == base
    assert FeatureCache.key("cd" * 32, "cfg", "enc") != base
    assert FeatureCache.key(h, "cfg2", "enc") != base
    assert FeatureCache.key(h, "cfg", "enc2") != base
    # Part boundaries matter: ("ab", "c") is not ("a", "bc").
    assert FeatureCache.key(h, "ab", "c") != FeatureCache.key(h, "a", "bc")


def test_hit_returns_equal_arrays(tmp_path):
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    fn = _Counter(_arrays())
    first = cache.get_or_compute("acoustic", key, fn)
    second = cache.get_or_compute("acoustic", key, fn)
    assert fn.calls == 1
    _assert_equal(first, _arrays())
    _assert_equal(second, _arrays())
    assert cache.path("acoustic", key) == tmp_path / "acoustic" / key[:2] / f"{key}.npz"
    assert cache.path("acoustic", key).is_file()
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (1, 1, 1)


def test_changed_config_misses(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("acoustic", _key(cache, "cfg-a"), _arrays())
    assert cache.get("acoustic", _key(cache, "cfg-b")) is None
    assert cache.get("ssl", _key(cache, "cfg-a")) is None  # kinds are separate
    assert cache.get("acoustic", _key(cache, "cfg-a")) is not None


def test_truncated_entry_is_recomputed_and_repaired(tmp_path):
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    fn = _Counter(_arrays())
    cache.get_or_compute("acoustic", key, fn)
    path = cache.path("acoustic", key)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    got = cache.get_or_compute("acoustic", key, fn)
    assert fn.calls == 2
    _assert_equal(got, _arrays())
    assert cache.stats.corrupt == 1
    # Repaired on disk: a fresh cache reads it back as a hit.
    fresh = FeatureCache(tmp_path)
    _assert_equal(fresh.get("acoustic", key), _arrays())
    assert fresh.stats.hits == 1 and fresh.stats.corrupt == 0


def test_garbage_bytes_are_recomputed(tmp_path):
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    path = cache.path("acoustic", key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage\xff" * 10)
    fn = _Counter(_arrays())
    _assert_equal(cache.get_or_compute("acoustic", key, fn), _arrays())
    assert fn.calls == 1 and cache.stats.corrupt == 1
    _assert_equal(cache.get("acoustic", key), _arrays())


def test_flipped_array_byte_fails_checksum(tmp_path):
    # A readable npz whose data no longer matches its checksum.
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    good = _arrays()
    bad = dict(good, __checksum__=np.array(cache_lib.arrays_checksum(good)))
    bad["mfcc"] = bad["mfcc"].copy()
    bad["mfcc"][0, 0] += 1.0
    path = cache.path("acoustic", key)
    path.parent.mkdir(parents=True)
    np.savez(path, **bad)
    assert cache.get("acoustic", key) is None
    assert not path.exists()
    assert cache.stats.corrupt == 1


def test_entry_without_checksum_is_discarded(tmp_path):
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    path = cache.path("acoustic", key)
    path.parent.mkdir(parents=True)
    np.savez(path, **_arrays())
    assert cache.get("acoustic", key) is None
    assert not path.exists()


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    key = _key(cache)

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(cache_lib.os, "replace", crash)
    with pytest.raises(WriteError, match="cannot write a feature cache entry: simulated crash"):
        cache.put("acoustic", key, _arrays())
    monkeypatch.undo()

    assert _entry_files(tmp_path) == []
    assert cache.get("acoustic", key) is None
    fn = _Counter(_arrays())
    cache.get_or_compute("acoustic", key, fn)
    assert fn.calls == 1
    assert _entry_files(tmp_path) == [cache.path("acoustic", key).relative_to(tmp_path)]


def test_disabled_cache_never_touches_disk(tmp_path):
    root = tmp_path / "cache"
    for cache in (FeatureCache(root, enabled=False), FeatureCache(None)):
        key = _key(cache)
        fn = _Counter(_arrays())
        for _ in range(2):
            _assert_equal(cache.get_or_compute("acoustic", key, fn), _arrays())
        cache.put("ssl", key, _arrays())
        assert cache.get("ssl", key) is None
        assert fn.calls == 2
        assert cache.stats.hits == 0 and cache.stats.writes == 0
    assert not root.exists()


def test_disabled_cache_ignores_existing_entries(tmp_path):
    key = _key(FeatureCache(tmp_path))
    FeatureCache(tmp_path).put("acoustic", key, _arrays())
    fn = _Counter(_arrays(seed=1))
    got = FeatureCache(tmp_path, enabled=False).get_or_compute("acoustic", key, fn)
    assert fn.calls == 1
    _assert_equal(got, _arrays(seed=1))


def test_same_key_put_twice_is_safe(tmp_path):
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    cache.put("acoustic", key, _arrays(seed=0))
    cache.put("acoustic", key, _arrays(seed=1))
    _assert_equal(cache.get("acoustic", key), _arrays(seed=1))

    # Several writers of one key at once: the survivor is one complete entry.
    writers = [
        threading.Thread(target=cache.put, args=("acoustic", key, _arrays(seed=s)))
        for s in range(4)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    got = cache.get("acoustic", key)
    assert any(
        all(np.array_equal(got[n], a[n]) for n in a) for a in (_arrays(seed=s) for s in range(4))
    )
    assert _entry_files(tmp_path) == [cache.path("acoustic", key).relative_to(tmp_path)]


def test_rejects_bad_kinds_keys_and_arrays(tmp_path):
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    with pytest.raises(ValueError, match="kind"):
        cache.get("../x", key)
    with pytest.raises(ValueError, match="key"):
        cache.get("acoustic", "not-a-key")
    with pytest.raises(TypeError, match="object"):
        cache.put("acoustic", key, {"x": np.array([{}, 1], dtype=object)})
    with pytest.raises(ValueError, match="name"):
        cache.put("acoustic", key, {"__checksum__": np.zeros(2)})
    with pytest.raises(TypeError, match="str"):
        cache.key("ab" * 32, 3)

"""Tests for msjax.features.pool: the worker pool gives the serial results, in order,
and stops at the first bad file after everything before it."""

from pathlib import Path

import numpy as np
import pytest

from msjax.errors import UsageError
from msjax.features import pool as feature_pool
from msjax.features.acoustic import FeatureConfig, file_features

CFG = FeatureConfig()


def _write_clips(folder: Path, count: int, bad_at: int | None = None) -> list[Path]:
    import soundfile as sf

    paths = []
    for i in range(count):
        path = folder / f"clip{i:02d}.wav"
        if i == bad_at:
            path.write_bytes(b"RIFF....WAVEnot audio")
        else:
            noise = np.random.default_rng(i).standard_normal(8000 + 1000 * i)
            sf.write(path, (0.1 * noise).astype(np.float32), 16000)
        paths.append(path)
    return paths


def test_parallel_file_features_match_serial(tmp_path):
    paths = _write_clips(tmp_path, 20)
    parallel = list(feature_pool.iter_file_features(paths, CFG, workers=2))
    assert len(parallel) == 20
    for path, (wav, feats) in zip(paths, parallel):
        want_wav, want = file_features(path, CFG)
        np.testing.assert_array_equal(wav, want_wav)
        np.testing.assert_array_equal(feats["mfcc"], want["mfcc"])
        np.testing.assert_array_equal(feats["spec"], want["spec"])


def test_parallel_bad_file_comes_after_everything_before_it(tmp_path):
    from msjax.errors import AudioError

    paths = _write_clips(tmp_path, 20, bad_at=13)
    seen = []
    with pytest.raises(AudioError, match="clip13.wav"):
        for wav, _ in feature_pool.iter_file_features(paths, CFG, workers=2):
            seen.append(len(wav))
    assert seen == [8000 + 1000 * i for i in range(13)]


def test_workers_must_be_positive():
    with pytest.raises(UsageError, match="workers must be at least 1"):
        feature_pool.iter_utterance_features([np.zeros(100, np.float32)], CFG, workers=0)

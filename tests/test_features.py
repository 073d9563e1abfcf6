"""Tests for msjax.features.acoustic: shapes, parity with librosa, segmentation, config hashing."""

import dataclasses

import numpy as np
import pytest

from msjax.errors import UsageError
from msjax.features import acoustic as features
from msjax.features.acoustic import FeatureConfig
from msjax.features.audio import load_audio, preemphasis

CFG = FeatureConfig()


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_config_derived_sizes():
    assert CFG.segment_samples == 48000 and CFG.segment_frames == 300
    assert FeatureConfig.from_dict(CFG.to_dict()) == CFG


def test_three_second_clip():
    wav = _noise(48000)
    feats = features.utterance_features(wav, CFG)
    assert feats["mfcc"].shape == (301, 40) and feats["spec"].shape == (200, 301)
    assert feats["mfcc"].dtype == np.float32 and feats["spec"].dtype == np.float32
    seg = features.segment(wav, feats, CFG)
    assert len(seg) == 1
    assert seg.wav.shape == (1, 48000) and seg.wav.dtype == np.float32
    assert seg.mfcc.shape == (1, 300, 40) and seg.mfcc.dtype == np.float32
    assert seg.spec.shape == (1, 200, 300) and seg.spec.dtype == np.float32
    # The waveform segment is the raw input, not the pre-emphasised one.
    np.testing.assert_array_equal(seg.wav[0], wav)
    np.testing.assert_array_equal(seg.mfcc[0], feats["mfcc"][:300])
    np.testing.assert_array_equal(seg.spec[0], feats["spec"][:, :300])


def test_long_clip_segments_and_silence_padding():
    n = 118400  # 7.4 s
    wav = _noise(n)
    feats = features.utterance_features(wav, CFG)
    frames = 1 + n // 160
    seg = features.segment(wav, feats, CFG)
    assert len(seg) == 3 and seg.wav.shape == (3, 48000)
    assert seg.mfcc.shape == (3, 300, 40) and seg.spec.shape == (3, 200, 300)
    for k in range(3):
        np.testing.assert_array_equal(
            seg.wav[k, : min(48000, n - 48000 * k)], wav[48000 * k : 48000 * (k + 1)]
        )
        np.testing.assert_array_equal(
            seg.mfcc[k, : min(300, frames - 300 * k)], feats["mfcc"][300 * k : 300 * (k + 1)]
        )
    valid_samples, valid_frames = n - 96000, frames - 600  # in the last segment
    assert not seg.wav[2, valid_samples:].any()
    assert not seg.mfcc[2, valid_frames:].any()
    # The spectrogram pads with its silence floor: 0 dB would be the loudest bin.
    np.testing.assert_array_equal(seg.spec[2, :, valid_frames:], -CFG.top_db)
    np.testing.assert_array_equal(seg.spec[2, :, :valid_frames], feats["spec"][:, 600:])


@pytest.mark.parametrize("n,count", [(1, 1), (47999, 1), (48000, 1), (48001, 2), (118400, 3)])
def test_num_segments(n, count):
    assert features.num_segments(n, CFG) == count


@pytest.mark.parametrize("n", [1, 100, 399])
def test_audio_shorter_than_one_ssl_window(n):
    wav = _noise(n)
    seg = features.segment(wav, features.utterance_features(wav, CFG), CFG)
    assert seg.wav.shape == (1, 48000) and seg.mfcc.shape == (1, 300, 40)
    assert seg.spec.shape == (1, 200, 300)
    assert np.isfinite(seg.mfcc).all() and np.isfinite(seg.spec).all()


def test_silent_audio_is_finite():
    feats = features.utterance_features(np.zeros(20000, np.float32), CFG)
    assert np.isfinite(feats["mfcc"]).all() and np.isfinite(feats["spec"]).all()
    # librosa's floors: every bin equals the (zero) reference, every mel band -100 dB.
    assert not feats["spec"].any()
    np.testing.assert_allclose(feats["mfcc"][:, 0], -100 * np.sqrt(128), rtol=1e-5)


def test_spectrogram_range():
    spec = features.utterance_features(_noise(16000), CFG)["spec"]
    assert spec.max() <= 0.0 and spec.min() >= -80.0


@pytest.mark.parametrize("source", ["emodb", "noise", "silence", "short", "tone"])
def test_matches_librosa(source, request):
    if source == "emodb":
        emodb_dir = request.getfixturevalue("emodb_dir")
        raw = load_audio(sorted((emodb_dir / "wav").glob("*.wav"))[3])
    elif source == "noise":
        raw = _noise(75000, seed=2)
    elif source == "silence":
        raw = np.zeros(5000, np.float32)
    elif source == "short":
        raw = _noise(300, seed=3)
    else:  # a pure tone leaves most bins near the floor
        raw = (0.3 * np.sin(2 * np.pi * 300 * np.arange(20000) / 16000)).astype(np.float32)
    wav = preemphasis(raw, CFG.preemphasis)
    fast = features.utterance_features(raw, CFG)
    mfcc_ref = features.reference_mfcc(wav, CFG)
    spec_ref = features.reference_log_spectrogram(wav, CFG)
    assert fast["mfcc"].shape == mfcc_ref.shape and fast["spec"].shape == spec_ref.shape
    # float32 rounding only: MFCCs are O(100), dB values in [-80, 0].
    np.testing.assert_allclose(fast["mfcc"], mfcc_ref, atol=5e-3, rtol=1e-5)
    np.testing.assert_allclose(fast["spec"], spec_ref, atol=5e-3)


def test_segment_rejects_mismatched_features():
    feats = features.utterance_features(_noise(16000), CFG)
    with pytest.raises(ValueError, match="frames"):
        features.segment(_noise(32000), feats, CFG)


_CHANGED = {
    "sample_rate": 8000,
    "segment_seconds": 2.0,
    "hop_length": 80,
    "n_mfcc": 20,
    "mfcc_n_fft": 1024,
    "n_mels": 64,
    "spec_n_fft": 1024,
    "spec_win_length": 400,
    "spec_bins": 100,
    "top_db": 60.0,
    "preemphasis": 0.0,
}


def test_fingerprint_changes_with_every_field():
    assert set(_CHANGED) == {f.name for f in dataclasses.fields(FeatureConfig)}
    base = CFG.fingerprint()
    assert base == FeatureConfig().fingerprint()
    seen = {base}
    for name, value in _CHANGED.items():
        seen.add(dataclasses.replace(CFG, **{name: value}).fingerprint())
    assert len(seen) == len(_CHANGED) + 1


def test_fingerprint_is_stable():
    # Pinned: if this changes, every feature cache is invalidated. Bump
    # FEATURES_VERSION deliberately and update the value here.
    assert FeatureConfig(segment_seconds=3).fingerprint() == (
        "e98f475831eb1f6ac0d3deb566d2e3d92c2bfa3d4cc3439dbe6e5c92e32022bf"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"hop_length": 0},
        {"segment_seconds": 3.001},
        {"hop_length": 7},
        {"n_mfcc": 200},
        {"spec_bins": 500},
        {"spec_win_length": 1000},
        {"preemphasis": 1.0},
        {"n_mels": 64.5},
        {"hop_length": "abc"},
    ],
)
def test_invalid_config(bad):
    with pytest.raises(UsageError, match="feature config"):
        FeatureConfig(**bad)


def test_non_default_config_shapes():
    cfg = FeatureConfig(segment_seconds=2.0, n_mfcc=20, spec_bins=100)
    wav = _noise(40000)
    seg = features.segment(wav, features.utterance_features(wav, cfg), cfg)
    assert seg.wav.shape == (2, 32000) and seg.mfcc.shape == (2, 200, 20)
    assert seg.spec.shape == (2, 100, 200)

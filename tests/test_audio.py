"""Tests for msjax.features.audio: decoding, mixdown, resampling, errors, pre-emphasis."""


import librosa
import numpy as np
import pytest
import soundfile as sf

from msjax.errors import AudioError, DataError
from msjax.features.audio import SAMPLE_RATE, load_audio, preemphasis


def _tone(rate: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    # Each channel a different tone so that the mixdown is checkable.
    cols = [0.4 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize(
    "fmt,subtype,rate,channels",
    [
        ("WAV", "PCM_U8", 8000, 1),
        ("WAV", "PCM_16", 16000, 1),
        ("WAV", "PCM_24", 22050, 2),
        ("WAV", "PCM_32", 44100, 1),
        ("WAV", "FLOAT", 48000, 2),
        ("WAV", "DOUBLE", 16000, 3),
        ("FLAC", "PCM_16", 44100, 2),
        ("FLAC", "PCM_24", 48000, 1),
    ],
)
def test_load_any_format_to_mono_16k(tmp_path, fmt, subtype, rate, channels):
    seconds = 0.5
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, _tone(rate, seconds, channels=channels), rate, format=fmt, subtype=subtype)

    wav = load_audio(path)

    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == round(seconds * SAMPLE_RATE)
    expected = _tone(SAMPLE_RATE, seconds, channels=channels).mean(axis=1)
    # Resampling filters the edges; compare the middle. 8-bit audio is coarse.
    middle = slice(400, -400)
    tol = 0.02 if subtype == "PCM_U8" else 2e-3
    np.testing.assert_allclose(wav[middle], expected[middle], atol=tol)


def test_stereo_mixdown_is_channel_mean(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, size=(1600, 2)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), stereo.mean(axis=1), atol=1e-7)


def test_resample_to_other_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(44100, 1.0), 44100)
    assert load_audio(path, sample_rate=8000).shape == (8000,)


def test_real_emodb_file(emodb_dir):
    path = min((emodb_dir / "wav").glob("*.wav"))
    wav = load_audio(path)
    assert wav.shape == (32000,)  # the copy here is 2.0 s at 22.05 kHz
    assert np.abs(wav).max() > 0.01


def test_very_short_audio_loads(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, np.full(10, 0.1), SAMPLE_RATE)
    assert load_audio(path).shape == (10,)


def _assert_audio_error(path, fragment: str):
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message
    assert isinstance(info.value, DataError) and info.value.exit_code == 3


def test_missing_file(tmp_path):
    _assert_audio_error(tmp_path / "nope.wav", "no such audio file")


def test_directory(tmp_path):
    _assert_audio_error(tmp_path, "is a directory")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_audio_error(path, "cannot decode audio")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _assert_audio_error(path, "cannot decode audio")


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_header_only_file_has_no_samples(tmp_path, subtype):
    path = tmp_path / "nosamples.wav"
    sf.write(path, np.zeros((0, 2)), SAMPLE_RATE, subtype=subtype)
    _assert_audio_error(path, "contains no audio samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    data = np.zeros(800, np.float32)
    data[123] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, data, SAMPLE_RATE, subtype="FLOAT")
    _assert_audio_error(path, "NaN or infinite")


def test_too_short_to_resample(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, np.full(1, 0.5), 48000)
    _assert_audio_error(path, "too short to resample")


def test_preemphasis_matches_librosa():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    y = preemphasis(x, 0.97)
    assert y.dtype == np.float32 and y[0] == x[0]
    np.testing.assert_allclose(y, librosa.effects.preemphasis(x, coef=0.97, zi=[0.0]), atol=1e-6)
    np.testing.assert_array_equal(preemphasis(x, 0.0), x)
    assert preemphasis(np.zeros(0, np.float32)).shape == (0,)

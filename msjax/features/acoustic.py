"""Hand-crafted features (MFCC, log spectrogram) and 3 s segmentation.

Both features are computed on the whole pre-emphasised utterance and only then cut
into segments, as in CM (Zou et al., ICASSP 2022): the MFCC's 80 dB floor and the
spectrogram's 0 dB reference are relative to the utterance, not to a segment.

Definitions (`FeatureConfig` defaults, 16 kHz):
  * MFCC: `librosa.feature.mfcc(y, sr, n_mfcc=40, htk=True, hop_length=160,
    n_fft=2048, n_mels=128)` with librosa's other defaults (centred Hann frames,
    zero padding, Slaney-normalised mel filters, power_to_db with top_db 80,
    orthonormal DCT-II) -> [T, 40].
  * Log spectrogram: |STFT| with n_fft 800, a 640-sample Hamming window and hop 160,
    `librosa.amplitude_to_db(ref=np.max, top_db=80)`, bins 0-199 (0-3980 Hz) ->
    [200, T]. All values lie in [-80, 0] dB.
  * T = 1 + N // hop_length frames for N samples (centred frames).

`mfcc` and `log_spectrogram` compute these with a numpy STFT that reuses librosa's
windows and mel filters; it matches the librosa calls above (`reference_mfcc`,
`reference_log_spectrogram`, kept as the tested definition) to within float32
rounding and runs several times faster (cache-sized chunks of frames, power as
re^2 + im^2, a block-sparse mel product, single-threaded BLAS). Silent input gives
finite features: every log is floored (power 1e-10) exactly as librosa floors it.

For a whole corpus, `msjax.features.pool` runs `file_features` and
`utterance_features` in one worker process per core. A recording too long to hold at
once gets the same features window by window (msjax.features.streaming), with the utterance's
levels passed in (`ref_db`, `peak`).

An utterance of N samples gives ceil(N / 48000) segments, at least one: exactly 3 s
is one segment, 7.4 s is three, the last one zero-padded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import librosa
import numpy as np
import scipy.fft
from threadpoolctl import ThreadpoolController

from msjax.errors import UsageError
from msjax.features.audio import load_audio, preemphasis

# Bump when the feature computation changes in a way the fields do not capture, so
# that caches keyed by `FeatureConfig.fingerprint()` are invalidated.
FEATURES_VERSION = "msjax-features-2"

# STFT frames processed at once: 32 frames of 2048 float32 samples (256 KiB) and
# their spectra stay in the L2 cache. Measured on 2 s clips, 256-frame chunks make
# the power spectra about 15% slower; whole-utterance framing is slower still.
_CHUNK_FRAMES = 32
# librosa's floors: power_to_db(amin=1e-10), amplitude_to_db(amin=1e-5) squared.
_POWER_FLOOR = 1e-10
# Mel filters applied per group of this many: each group touches only a contiguous
# band of FFT bins, which cuts the mel product about 8x (128 mels, 1025 bins).
_MEL_GROUP = 16


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Everything that determines the hand-crafted features and the segments."""

    sample_rate: int = 16000
    segment_seconds: float = 3.0
    hop_length: int = 160
    n_mfcc: int = 40
    mfcc_n_fft: int = 2048
    n_mels: int = 128
    spec_n_fft: int = 800
    spec_win_length: int = 640
    spec_bins: int = 200
    top_db: float = 80.0
    preemphasis: float = 0.97

    def __post_init__(self):
        # Normalise types so that equal configs serialise (and hash) identically.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise UsageError(
                    f"feature config: {field.name}={value!r} is not a number"
                ) from None
            if isinstance(field.default, int):
                if isinstance(value, bool) or not number.is_integer():
                    raise UsageError(f"feature config: {field.name}={value!r} is not an integer")
                number = int(number)
            object.__setattr__(self, field.name, number)
        self._validate()

    def _validate(self) -> None:
        positive = (
            "sample_rate",
            "segment_seconds",
            "hop_length",
            "n_mfcc",
            "mfcc_n_fft",
            "n_mels",
            "spec_n_fft",
            "spec_win_length",
            "spec_bins",
            "top_db",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise UsageError(
                    f"feature config: {name} must be positive, got {getattr(self, name)}"
                )
        samples = self.segment_seconds * self.sample_rate
        if abs(samples - round(samples)) > 1e-6 or round(samples) % self.hop_length:
            raise UsageError(
                f"feature config: segment_seconds*sample_rate={samples:g} must be a whole "
                f"number of hops of {self.hop_length} samples"
            )
        if self.n_mfcc > self.n_mels:
            raise UsageError(f"feature config: n_mfcc={self.n_mfcc} exceeds n_mels={self.n_mels}")
        if self.spec_win_length > self.spec_n_fft:
            raise UsageError(
                f"feature config: spec_win_length={self.spec_win_length} exceeds "
                f"spec_n_fft={self.spec_n_fft}"
            )
        if self.spec_bins > self.spec_n_fft // 2 + 1:
            raise UsageError(
                f"feature config: spec_bins={self.spec_bins} exceeds the "
                f"{self.spec_n_fft // 2 + 1} bins of a {self.spec_n_fft}-point FFT"
            )
        if not 0.0 <= self.preemphasis < 1.0:
            raise UsageError(f"feature config: preemphasis={self.preemphasis} is not in [0, 1)")

    @property
    def segment_samples(self) -> int:
        """Samples per segment (48000 by default)."""
        return round(self.segment_seconds * self.sample_rate)

    @property
    def segment_frames(self) -> int:
        """MFCC/spectrogram frames per segment (300 by default)."""
        return self.segment_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        """Inverse of `to_dict`; unknown keys are an error, missing keys take defaults."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UsageError(f"feature config: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**values)

    def fingerprint(self) -> str:
        """A stable sha256 hex digest of the fields and `FEATURES_VERSION` (cache key)."""
        payload = json.dumps(
            {"version": FEATURES_VERSION, "config": self.to_dict()},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class Segments:
    """An utterance cut into S fixed-length, zero-padded segments (all float32).

    Attributes:
        wav: [S, segment_samples] waveform segments.
        mfcc: [S, segment_frames, n_mfcc].
        spec: [S, spec_bins, segment_frames] log spectrogram in dB.
    """

    wav: np.ndarray
    mfcc: np.ndarray
    spec: np.ndarray

    def __len__(self) -> int:
        return self.wav.shape[0]


@functools.cache
def _blas_threads() -> ThreadpoolController:
    return ThreadpoolController()


def _single_threaded_blas():
    """Limits BLAS to one thread (process-wide) for the duration of a `with` block.

    The matrix products here are small; multi-threaded OpenBLAS makes them slower,
    and up to 50x slower when the cores are busy (measured on a shared 2-core
    machine). Parallelism belongs at the utterance level instead.
    """
    return _blas_threads().limit(limits=1, user_api="blas")


@dataclasses.dataclass(frozen=True)
class _MelBlock:
    bins: slice  # FFT bins the filters below are non-zero on
    mels: slice  # a run of consecutive mel filters
    weights: np.ndarray  # [bins, mels]


@dataclasses.dataclass(frozen=True)
class _Constants:
    mfcc_window: np.ndarray  # [mfcc_n_fft]
    mel_blocks: tuple[_MelBlock, ...]  # together: librosa's mel filter bank
    dct_t: np.ndarray  # [n_mels, n_mfcc]
    spec_window: np.ndarray  # [spec_win_length]


def _mel_blocks(mel: np.ndarray) -> tuple[_MelBlock, ...]:
    """Splits a mel filter bank [n_mels, bins] into blocks over their non-zero bins."""
    blocks = []
    for start in range(0, mel.shape[0], _MEL_GROUP):
        mels = slice(start, min(start + _MEL_GROUP, mel.shape[0]))
        nonzero = np.flatnonzero(mel[mels].any(axis=0))
        # An all-zero group (possible for tiny n_fft) still needs a non-empty product.
        lo, hi = (nonzero[0], nonzero[-1] + 1) if nonzero.size else (0, 1)
        weights = np.ascontiguousarray(mel[mels, lo:hi].T, dtype=np.float32)
        blocks.append(_MelBlock(bins=slice(lo, hi), mels=mels, weights=weights))
    return tuple(blocks)


@functools.lru_cache(maxsize=8)
def _constants(cfg: FeatureConfig) -> _Constants:
    mel = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.mfcc_n_fft, n_mels=cfg.n_mels, htk=True)
    dct = scipy.fft.dct(np.eye(cfg.n_mels), type=2, norm="ortho", axis=0)[: cfg.n_mfcc]
    return _Constants(
        mfcc_window=librosa.filters.get_window("hann", cfg.mfcc_n_fft).astype(np.float32),
        mel_blocks=_mel_blocks(mel),
        dct_t=np.ascontiguousarray(dct.T, dtype=np.float32),
        spec_window=librosa.filters.get_window("hamming", cfg.spec_win_length).astype(np.float32),
    )


def _power_chunks(
    wav: np.ndarray, n_fft: int, window: np.ndarray, hop: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first frame, |STFT|^2 [chunk, n_fft // 2 + 1]) over librosa's centred frames.

    The yielded array is a buffer reused by the next step: use it before advancing.
    """
    num_frames = 1 + wav.shape[0] // hop
    width = window.shape[0]
    padded = np.pad(wav, n_fft // 2)
    # librosa centres a window shorter than n_fft inside the frame. Only the
    # windowed samples are transformed (zero-padded to n_fft): the shift to the
    # frame start changes the phase, not the magnitude.
    offset = (n_fft - width) // 2
    frames = np.lib.stride_tricks.sliding_window_view(padded[offset:], width)[::hop]
    # Columns past `width` stay zero, so rfft needs no padded copy of its input.
    block = np.zeros((min(_CHUNK_FRAMES, num_frames), n_fft), np.float32)
    power = np.empty((block.shape[0], n_fft // 2 + 1), np.float32)
    for start in range(0, num_frames, _CHUNK_FRAMES):
        rows = min(_CHUNK_FRAMES, num_frames - start)
        np.multiply(frames[start : start + rows], window, out=block[:rows, :width])
        spectrum = scipy.fft.rfft(block[:rows], axis=-1)
        # re^2 + im^2 on the interleaved float view: np.abs would take a square root
        # (hypot) only for it to be squared again.
        parts = spectrum.view(np.float32)
        np.square(parts, out=parts)
        np.add(parts[:, 0::2], parts[:, 1::2], out=power[:rows])
        yield start, power[:rows]


def log_mel_db(wav: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log-mel power of an already pre-emphasised waveform, before the top_db floor.

    Args:
        wav: [N] waveform at `cfg.sample_rate`.
        cfg: feature configuration.

    Returns:
        float32 [T, n_mels] in dB (power floored at 1e-10), T = 1 + N // hop_length.
    """
    wav = np.asarray(wav, dtype=np.float32)
    consts = _constants(cfg)
    num_frames = 1 + wav.shape[0] // cfg.hop_length
    log_mel = np.empty((num_frames, cfg.n_mels), np.float32)
    with _single_threaded_blas():
        chunks = _power_chunks(wav, cfg.mfcc_n_fft, consts.mfcc_window, cfg.hop_length)
        for start, power in chunks:
            mel = log_mel[start : start + power.shape[0]]
            for block in consts.mel_blocks:
                np.matmul(power[:, block.bins], block.weights, out=mel[:, block.mels])
    np.maximum(log_mel, _POWER_FLOOR, out=log_mel)
    np.log10(log_mel, out=log_mel)
    log_mel *= 10.0
    return log_mel


def mfcc(wav: np.ndarray, cfg: FeatureConfig, *, ref_db: float | None = None) -> np.ndarray:
    """MFCCs of an already pre-emphasised waveform.

    Args:
        wav: [N] waveform at `cfg.sample_rate`.
        cfg: feature configuration.
        ref_db: the loudest log-mel value of the utterance (`log_mel_db`), from which the
            top_db floor is measured; None takes it from `wav` itself.

    Returns:
        float32 [T, n_mfcc], T = 1 + N // hop_length.
    """
    log_mel = log_mel_db(wav, cfg)
    ref = log_mel.max() if ref_db is None else np.float32(ref_db)
    np.maximum(log_mel, ref - cfg.top_db, out=log_mel)
    with _single_threaded_blas():
        return log_mel @ _constants(cfg).dct_t


def spectrogram_power(wav: np.ndarray, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """STFT power of an already pre-emphasised waveform: the kept bins and each frame's peak.

    Args:
        wav: [N] waveform at `cfg.sample_rate`.
        cfg: feature configuration.

    Returns:
        (float32 [T, spec_bins] power, float32 [T] loudest power of each frame over all
        FFT bins, not only the kept ones), T = 1 + N // hop_length.
    """
    wav = np.asarray(wav, dtype=np.float32)
    consts = _constants(cfg)
    num_frames = 1 + wav.shape[0] // cfg.hop_length
    power = np.empty((num_frames, cfg.spec_bins), np.float32)
    peaks = np.empty(num_frames, np.float32)
    for start, chunk in _power_chunks(wav, cfg.spec_n_fft, consts.spec_window, cfg.hop_length):
        peaks[start : start + chunk.shape[0]] = chunk.max(axis=1)
        power[start : start + chunk.shape[0]] = chunk[:, : cfg.spec_bins]
    return power, peaks


def log_spectrogram(
    wav: np.ndarray, cfg: FeatureConfig, *, peak: float | None = None
) -> np.ndarray:
    """Log-magnitude spectrogram of an already pre-emphasised waveform.

    Args:
        wav: [N] waveform at `cfg.sample_rate`.
        cfg: feature configuration.
        peak: the loudest STFT power bin of the utterance (`spectrogram_power`), its 0 dB;
            None takes it from `wav` itself.

    Returns:
        float32 [spec_bins, T] in dB relative to the loudest bin of the utterance (over
        all FFT bins, not only the kept ones), floored at -top_db.
    """
    power, peaks = spectrogram_power(wav, cfg)
    peak = peaks.max() if peak is None else peak
    # Dividing before the log (librosa subtracts after) makes the loudest bin, and
    # every bin of silent audio, exactly 0 dB.
    np.maximum(power, _POWER_FLOOR, out=power)
    power /= np.float32(max(peak, _POWER_FLOOR))
    db = 10.0 * np.log10(power)
    # The utterance maximum is 0 dB, so librosa's top_db clips at -top_db.
    np.maximum(db, -cfg.top_db, out=db)
    return np.ascontiguousarray(db.T)


def reference_mfcc(wav: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """`mfcc` computed by librosa itself (slower; the definition `mfcc` is tested against)."""
    with warnings.catch_warnings():
        # Clips shorter than n_fft are valid here: centred frames are zero-padded.
        warnings.filterwarnings("ignore", message="n_fft=.*is too large")
        mel = librosa.feature.melspectrogram(
            y=np.asarray(wav, np.float32),
            sr=cfg.sample_rate,
            hop_length=cfg.hop_length,
            n_fft=cfg.mfcc_n_fft,
            n_mels=cfg.n_mels,
            htk=True,
        )
    # Same as librosa.feature.mfcc(y=...), which fixes top_db at power_to_db's 80.
    out = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=cfg.top_db), n_mfcc=cfg.n_mfcc)
    return np.ascontiguousarray(out.T, dtype=np.float32)


def reference_log_spectrogram(wav: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """`log_spectrogram` computed by librosa itself (slower; the tested definition)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_fft=.*is too large")
        stft = librosa.stft(
            np.asarray(wav, np.float32),
            n_fft=cfg.spec_n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.spec_win_length,
            window="hamming",
        )
    db = librosa.amplitude_to_db(np.abs(stft), ref=np.max, top_db=cfg.top_db)
    return np.ascontiguousarray(db[: cfg.spec_bins], dtype=np.float32)


def utterance_features(wav: np.ndarray, cfg: FeatureConfig) -> dict[str, np.ndarray]:
    """Pre-emphasises a raw waveform once and computes both hand-crafted features.

    Args:
        wav: [N] raw (not pre-emphasised) waveform at `cfg.sample_rate`.
        cfg: feature configuration.

    Returns:
        {"mfcc": float32 [T, n_mfcc], "spec": float32 [spec_bins, T]}, T = 1 + N // hop.
    """
    emphasised = preemphasis(np.asarray(wav, dtype=np.float32), cfg.preemphasis)
    return {"mfcc": mfcc(emphasised, cfg), "spec": log_spectrogram(emphasised, cfg)}


def file_features(
    path: str | os.PathLike, cfg: FeatureConfig
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Decodes and resamples one file (`load_audio`), then `utterance_features`.

    Returns:
        (wav float32 [N] at `cfg.sample_rate`, {"mfcc": [T, n_mfcc], "spec": [spec_bins, T]}).
    """
    wav = load_audio(path, cfg.sample_rate)
    return wav, utterance_features(wav, cfg)


def num_segments(n_samples: int, cfg: FeatureConfig) -> int:
    """ceil(n_samples / segment_samples), at least 1 (3.0 s -> 1, 3.01 s -> 2, 7.4 s -> 3)."""
    return max(1, math.ceil(n_samples / cfg.segment_samples))


def _cut(x: np.ndarray, count: int, length: int, axis: int, fill: float = 0.0) -> np.ndarray:
    """Pads (with `fill`) or truncates `axis` to count * length, then cuts it into pieces.

    Returns an array with a new leading axis of size `count`, `axis` (shifted by one)
    now of size `length`.
    """
    x = np.asarray(x, dtype=np.float32)
    total = count * length
    x = np.moveaxis(x, axis, -1)[..., :total]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, total - x.shape[-1])]
    x = np.pad(x, pad, constant_values=fill).reshape(*x.shape[:-1], count, length)
    # [..., count, length] -> [count, ..., length], then `length` back to `axis`.
    return np.ascontiguousarray(np.moveaxis(np.moveaxis(x, -2, 0), -1, axis + 1))


def segment(wav: np.ndarray, feats: dict[str, np.ndarray], cfg: FeatureConfig) -> Segments:
    """Cuts an utterance and its features into zero-padded fixed-length segments.

    Segment k holds samples [k * segment_samples, (k + 1) * segment_samples) and
    frames [k * segment_frames, (k + 1) * segment_frames); the last segment is
    padded with silence: zeros for the waveform and MFCC, the -top_db floor for the
    spectrogram (its 0 dB is the utterance's loudest bin, not silence); frames past
    the last segment (the one centred on the final sample of an exact multiple of
    3 s) are dropped.

    Args:
        wav: [N] waveform to cut, as the SSL encoder should see it (the raw 16 kHz
            signal; the waveform is not modified here).
        feats: `utterance_features` of the same waveform: mfcc [T, n_mfcc], spec
            [spec_bins, T] with T = 1 + N // hop_length.
        cfg: feature configuration.

    Returns:
        Segments with S = num_segments(N) rows.
    """
    n = np.shape(wav)[0]
    frames = 1 + n // cfg.hop_length
    if feats["mfcc"].shape[0] != frames or feats["spec"].shape[1] != frames:
        raise ValueError(
            f"features have {feats['mfcc'].shape[0]} MFCC / {feats['spec'].shape[1]} "
            f"spectrogram frames but a {n}-sample waveform gives {frames}"
        )
    count = num_segments(n, cfg)
    return Segments(
        wav=_cut(wav, count, cfg.segment_samples, axis=0),
        mfcc=_cut(feats["mfcc"], count, cfg.segment_frames, axis=0),
        spec=_cut(feats["spec"], count, cfg.segment_frames, axis=1, fill=-cfg.top_db),
    )

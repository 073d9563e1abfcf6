"""Segments of a recording of any length, read in windows so that memory stays bounded.

A file of at most one window is read whole: `load_audio`, `utterance_features`,
`segment`, as training prepared its utterances. A longer one (a call, a meeting) is read
in windows of a whole number of segments by `stream_audio`, and each window gives the
very rows `segment` would cut from the whole file, to float32 rounding:

* Resampling: one soxr stream runs over the whole file (`stream_audio`), so the window
  waveforms joined are `load_audio`'s samples; no seams at window boundaries.
* Frames: the features use centred STFT frames over the file, zero-padded at its two
  ends. Each window is processed with `context_samples` of its neighbours on each side
  (zeros beyond the file's ends), at least half the longest FFT plus the sample that
  pre-emphasis reads, so every frame of the window sees what it sees in the whole file;
  the context's own frames are then dropped.
* Levels: the MFCC's top_db floor and the spectrogram's 0 dB are relative to the loudest
  frame of the utterance, here the whole file. A first pass over the windows finds both
  levels (`Levels`); the second computes the features with them. The file is decoded and
  its STFTs computed twice; the encoder's cost dwarfs both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from msjax.features.acoustic import (
    FeatureConfig,
    Segments,
    log_mel_db,
    log_spectrogram,
    mfcc,
    segment,
    spectrogram_power,
    utterance_features,
)
from msjax.features.audio import audio_frames, load_audio, preemphasis, stream_audio


@dataclasses.dataclass(frozen=True)
class Levels:
    """The loudest frame of an utterance: the references its features are relative to.

    Attributes:
      mel_db: the largest log-mel value (dB); the MFCC floor lies top_db below it.
      spec_power: the largest STFT power bin; the spectrogram's 0 dB.
    """

    mel_db: float
    spec_power: float

    def join(self, other: Levels) -> Levels:
        return Levels(max(self.mel_db, other.mel_db), max(self.spec_power, other.spec_power))


def context_samples(cfg: FeatureConfig) -> int:
    """Samples of context on each side of a window: half the longest FFT plus one (the
    pre-emphasis reads the sample before), rounded up to whole hops so that frames of
    the context and of the file line up."""
    half = max(cfg.mfcc_n_fft, cfg.spec_n_fft) // 2 + 1
    return -(-half // cfg.hop_length) * cfg.hop_length


def file_segments(
    path: str | os.PathLike, cfg: FeatureConfig, window: int
) -> Iterator[tuple[Segments, int]]:
    """The segments of one audio file, window by window.

    Args:
      path: any file `load_audio` reads.
      cfg: feature configuration.
      window: samples per window at `cfg.sample_rate`, a whole number of segments.

    Yields:
      (Segments of the window, the window's samples before padding). The segments of
      all windows together are `segment(wav, utterance_features(wav, cfg), cfg)` of the
      whole file's waveform; no more than `window` samples are decoded at once.

    Raises:
      AudioError: as `load_audio` (a long file is checked whole before the first yield).
    """
    if window <= 0 or window % cfg.segment_samples:
        raise ValueError(f"window={window} is not a whole number of {cfg.segment_samples}-sample "
                         "segments")
    if audio_frames(path, cfg.sample_rate) <= window:
        wav = load_audio(path, cfg.sample_rate)
        yield segment(wav, utterance_features(wav, cfg), cfg), wav.shape[0]
        return
    pad = context_samples(cfg)
    levels = None
    for ctx, n, last in _with_context(stream_audio(path, window, cfg.sample_rate), pad):
        found = _levels(_emphasised(ctx, n, last, pad, cfg), n, last, pad, cfg)
        levels = found if levels is None else levels.join(found)
    for ctx, n, last in _with_context(stream_audio(path, window, cfg.sample_rate), pad):
        emphasised = _emphasised(ctx, n, last, pad, cfg)
        yield _window_segments(ctx[pad : pad + n], emphasised, pad, levels, cfg), n


def _with_context(
    blocks: Iterator[np.ndarray], pad: int
) -> Iterator[tuple[np.ndarray, int, bool]]:
    """(pad samples before + block + pad after, len(block), whether it is the last block),
    zeros standing in beyond the ends. Holds two blocks at a time."""
    before = np.zeros(pad, np.float32)
    block = next(blocks, None)
    while block is not None:
        following = next(blocks, None)
        after = np.zeros(pad, np.float32)
        if following is not None:
            head = following[:pad]
            after[: head.shape[0]] = head
        yield np.concatenate([before, block, after]), block.shape[0], following is None
        before = np.concatenate([before, block])[-pad:]
        block = following


def _emphasised(ctx: np.ndarray, n: int, last: bool, pad: int, cfg: FeatureConfig) -> np.ndarray:
    """Pre-emphasis of a window with its context. The whole file is pre-emphasised before
    its frames are zero-padded, so past the file's end the filtered signal is zero too."""
    emphasised = preemphasis(ctx, cfg.preemphasis)
    if last:
        emphasised[pad + n :] = 0.0
    return emphasised


def _levels(emphasised: np.ndarray, n: int, last: bool, pad: int, cfg: FeatureConfig) -> Levels:
    """The loudest of the window's own frames: those centred on its samples, and for the
    last window also the file's closing frame (centred on the sample past the end)."""
    first = pad // cfg.hop_length
    frames = slice(first, first + n // cfg.hop_length + (1 if last else 0))
    _, peaks = spectrogram_power(emphasised, cfg)
    return Levels(float(log_mel_db(emphasised, cfg)[frames].max()), float(peaks[frames].max()))


def _window_segments(
    wav: np.ndarray, emphasised: np.ndarray, pad: int, levels: Levels, cfg: FeatureConfig
) -> Segments:
    """`segment` of a window's waveform [n], its features computed on the pre-emphasised
    window with context [pad + n + pad] and relative to the file's `levels`."""
    first = pad // cfg.hop_length
    # The frames `segment` expects of an n-sample waveform: 1 + n // hop from its start.
    frames = slice(first, first + 1 + wav.shape[0] // cfg.hop_length)
    feats = {
        "mfcc": mfcc(emphasised, cfg, ref_db=levels.mel_db)[frames],
        "spec": log_spectrogram(emphasised, cfg, peak=levels.spec_power)[:, frames],
    }
    return segment(wav, feats, cfg)

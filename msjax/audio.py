"""Audio loading: any WAV/FLAC file to a mono 16 kHz float32 waveform.

Speech emotion corpora come in many shapes (EMOVO is 48 kHz stereo, the EMODB copy
here is 22.05 kHz, IEMOCAP is 16 kHz), so every file goes through `load_audio`,
which decodes with libsndfile (any bit depth: 8/16/24/32-bit integer or float),
averages the channels and resamples with soxr. Files that cannot be used raise
`AudioError` with a one-line message naming the file.

Very short audio is allowed: anything with at least one sample at 16 kHz loads, and
`msjax.features.segment` zero-pads every utterance to whole 3 s segments, so a clip
shorter than one wav2vec2 receptive field (400 samples) still yields valid inputs.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import soundfile as sf
import soxr

from msjax.errors import AudioError

SAMPLE_RATE = 16000
# Decoded samples are nominally in [-1, 1]; float files far outside hold garbage.
MAX_AMPLITUDE = 1000.0


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads an audio file as a mono waveform at `sample_rate`.

    Args:
        path: a WAV, FLAC or other libsndfile-readable file, any sample rate, bit
            depth and channel count.
        sample_rate: the output rate in Hz.

    Returns:
        float32 [N] samples (nominally in [-1, 1]), channels averaged.

    Raises:
        AudioError: the file is missing, unreadable or undecodable, holds no samples
            (or too few to survive resampling), or holds NaN/infinite samples or
            samples beyond `MAX_AMPLITUDE`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such audio file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        # [N, C] whatever the channel count; libsndfile scales integers to [-1, 1).
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(f"{path}: cannot decode audio ({e.error_string})") from e
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        reason = " ".join(str(e).split())
        raise AudioError(f"{path}: cannot read audio ({reason})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    peak = float(np.abs(data).max())
    if peak > MAX_AMPLITUDE:
        raise AudioError(
            f"{path}: absurd amplitude (peak {peak:.3g}, expected about 1); not audio samples"
        )
    # A mono file needs no channel mean: its one column is already contiguous.
    wav = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        wav = soxr.resample(wav, file_rate, sample_rate, quality="HQ")
        if wav.shape[0] == 0:
            raise AudioError(
                f"{path}: {data.shape[0]} sample(s) at {file_rate} Hz is too short to "
                f"resample to {sample_rate} Hz"
            )
    return np.ascontiguousarray(wav, dtype=np.float32)


def wav_header_problem(path: str | os.PathLike) -> str | None:
    """Why a WAV file's header disagrees with its size (a truncated copy), else None.

    libsndfile decodes the samples that are present without a word, so a cut-off
    file would pass as a shorter utterance. Files that are not RIFF/WAVE are left
    to the decoder.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        riff = struct.unpack("<I", head[4:8])[0]
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - pos - 8
                # 0 and 0xFFFFFFFF: sizes a streaming writer never filled in.
                if length not in (0, 0xFFFFFFFF) and length > present:
                    return (
                        f"truncated WAV: its header declares {length} data bytes, "
                        f"the file holds {present}"
                    )
                return None
            pos += 8 + length + (length & 1)
    if riff + 8 > size:
        return f"truncated WAV: its header declares {riff + 8} bytes, the file holds {size}"
    return "WAV header without a data chunk"


def preemphasis(wav: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """First-order pre-emphasis y[n] = x[n] - coef * x[n-1], with y[0] = x[0].

    Args:
        wav: [N] waveform.
        coef: filter coefficient; 0 returns a copy of the input.

    Returns:
        [N] filtered waveform, same dtype as `wav`.
    """
    wav = np.asarray(wav)
    out = np.empty_like(wav)
    if wav.shape[0]:
        out[0] = wav[0]
        np.subtract(wav[1:], coef * wav[:-1], out=out[1:])
    return out

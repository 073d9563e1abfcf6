"""Audio loading: any WAV/FLAC file to a mono 16 kHz float32 waveform.

Speech emotion corpora come in many shapes (EMOVO is 48 kHz stereo, the EMODB copy
here is 22.05 kHz, IEMOCAP is 16 kHz), so every file goes through `load_audio`,
which decodes with libsndfile (any bit depth: 8/16/24/32-bit integer or float),
averages the channels and resamples with soxr. Files that cannot be used raise
`AudioError` with a one-line message naming the file.
`stream_audio` gives the same waveform block by block, for recordings too long to
hold at once (msjax.features.streaming).

Very short audio is allowed: anything with at least one sample at 16 kHz loads, and
`msjax.features.acoustic.segment` zero-pads every utterance to whole 3 s segments, so a clip
shorter than one wav2vec2 receptive field (400 samples) still yields valid inputs.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

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
    path = _existing(path)
    with _decoding(path):
        # [N, C] whatever the channel count; libsndfile scales integers to [-1, 1).
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no audio samples")
    wav = _mono(path, data)
    if file_rate != sample_rate:
        wav = soxr.resample(wav, file_rate, sample_rate, quality="HQ")
        if wav.shape[0] == 0:
            raise _too_short(path, data.shape[0], file_rate, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def audio_frames(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> int:
    """About how many samples `load_audio` returns, from the header alone (0 if it
    cannot be read; decoding then reports why)."""
    try:
        info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, sf.SoundFileError, RuntimeError, OSError):
        return 0
    return round(info.frames * sample_rate / info.samplerate)


def stream_audio(
    path: str | os.PathLike, block: int, sample_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """`load_audio` in consecutive blocks, for recordings too long to hold at once.

    The file is decoded `block` frames at a time and resampled by one soxr stream, whose
    filter state carries across reads: the blocks joined are `load_audio`'s waveform
    (soxr's one-shot and streamed outputs are the same samples), with no seams.

    Yields:
        float32 [block] mono samples at `sample_rate`, the last block shorter.

    Raises:
        AudioError: as `load_audio`, when the block holding the problem is reached.
    """
    path = _existing(path)
    pending: list[np.ndarray] = []
    held = total = produced = 0
    with _decoding(path), sf.SoundFile(path) as f:
        file_rate = f.samplerate
        stream = None
        if file_rate != sample_rate:
            stream = soxr.ResampleStream(
                file_rate, sample_rate, 1, dtype="float32", quality="HQ"
            )
        last = False
        while not last:
            data = f.read(block, dtype="float32", always_2d=True)
            last = data.shape[0] < block
            total += data.shape[0]
            wav = _mono(path, data)
            if stream is not None:
                wav = stream.resample_chunk(wav, last=last)
            pending.append(wav)
            held += wav.shape[0]
            while held >= block or (last and held):
                joined = np.concatenate(pending)
                out, rest = joined[:block], joined[block:]
                pending, held = [rest], rest.shape[0]
                produced += out.shape[0]
                yield np.ascontiguousarray(out, dtype=np.float32)
    if total == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if produced == 0:
        raise _too_short(path, total, file_rate, sample_rate)


def _existing(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such audio file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    return path


@contextlib.contextmanager
def _decoding(path: str) -> Iterator[None]:
    """Turns libsndfile's failures into one-line `AudioError`s naming `path`."""
    try:
        yield
    except sf.LibsndfileError as e:
        raise AudioError(f"{path}: cannot decode audio ({e.error_string})") from e
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        reason = " ".join(str(e).split())
        raise AudioError(f"{path}: cannot read audio ({reason})") from e


def _mono(path: str, data: np.ndarray) -> np.ndarray:
    """Checked samples [N, C] -> [N], channels averaged."""
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > MAX_AMPLITUDE:
        raise AudioError(
            f"{path}: absurd amplitude (peak {peak:.3g}, expected about 1); not audio samples"
        )
    # A mono file needs no channel mean: its one column is already contiguous.
    return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)


def _too_short(path: str, frames: int, file_rate: int, sample_rate: int) -> AudioError:
    return AudioError(
        f"{path}: {frames} sample(s) at {file_rate} Hz is too short to "
        f"resample to {sample_rate} Hz"
    )


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

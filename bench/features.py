"""Benchmark: MFCC + log-spectrogram extraction throughput, msjax against CM-style librosa.

Throughput is hours of audio processed per hour of wall-clock time (h/h) over the
EMODB copy beside the repository (535 utterances, about 18 minutes of audio).

  msjax: `msjax.features.utterance_features` (pre-emphasis, MFCC, log spectrogram)
         in a process pool over utterances, one worker per core.
  peer:  a plain per-utterance librosa loop in one process, as CA-MSER extracts its
         features (librosa.effects.preemphasis, librosa.feature.mfcc, librosa.stft
         + amplitude_to_db).

Two workloads: features only (waveforms already decoded to 16 kHz in memory) and
end to end (decode + resample + features; peer uses librosa.load(sr=16000)).
Each figure is the best of --repeat passes, after a warm-up (numba compilation,
worker start-up) that is not timed. The features of both paths are compared and
the largest difference is printed. Peak memory is the maximum resident set size
of this process and of the largest worker.

    python bench/features.py [--data DIR] [--workers N] [--repeat N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import librosa
import numpy as np

from msjax.audio import load_audio
from msjax.features import FeatureConfig, utterance_features

CFG = FeatureConfig()
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"

# Set in each worker by the pool initializer (inherited, not pickled, under fork).
_WAVS: Sequence[np.ndarray] = ()


def peer_features(wav: np.ndarray) -> dict[str, np.ndarray]:
    """CA-MSER's per-utterance recipe with librosa (16 kHz input)."""
    x = librosa.effects.preemphasis(wav, coef=CFG.preemphasis, zi=[0.0])
    spec = np.abs(librosa.stft(x, n_fft=800, hop_length=160, win_length=640, window="hamming"))
    spec = librosa.amplitude_to_db(spec, ref=np.max)[:200]
    mfcc = librosa.feature.mfcc(y=x, sr=16000, n_mfcc=40, hop_length=160, htk=True).T
    return {"mfcc": mfcc, "spec": spec}


def _init_worker(wavs: Sequence[np.ndarray]) -> None:
    global _WAVS
    _WAVS = wavs
    warnings.filterwarnings("ignore", message="n_fft=.*is too large")


def _msjax_memory(index: int) -> dict[str, np.ndarray]:
    return utterance_features(_WAVS[index], CFG)


def _msjax_file(path: str) -> dict[str, np.ndarray]:
    return utterance_features(load_audio(path), CFG)


def _peer_file(path: str) -> dict[str, np.ndarray]:
    wav, _ = librosa.load(path, sr=CFG.sample_rate)
    return peer_features(wav)


def _best_time(run: Callable[[], list], repeat: int) -> tuple[float, list]:
    best, out = float("inf"), []
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def _max_diff(a: list[dict], b: list[dict], key: str) -> float:
    return max(float(np.abs(x[key] - y[key]).max()) for x, y in zip(a, b, strict=True))


def _rate(audio_hours: float, seconds: float) -> float:
    return audio_hours / (seconds / 3600.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="EMODB directory")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="n_fft=.*is too large")

    paths = sorted(str(p) for p in (args.data / "wav").glob("*.wav"))
    if not paths:
        raise SystemExit(f"{args.data}: no wav/*.wav files")
    wavs = [load_audio(p) for p in paths]
    audio_hours = sum(w.shape[0] for w in wavs) / CFG.sample_rate / 3600.0
    print(f"data: {len(paths)} utterances, {audio_hours * 60:.1f} min of audio ({args.data.name})")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")

    peer_features(wavs[0])  # compile librosa's numba kernels before timing
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(args.workers, context, _init_worker, (wavs,)) as pool:
        list(pool.map(_msjax_memory, range(args.workers)))  # start the workers
        chunk = max(1, len(wavs) // (8 * args.workers))
        t_msjax, ours = _best_time(
            lambda: list(pool.map(_msjax_memory, range(len(wavs)), chunksize=chunk)),
            args.repeat,
        )
        t_msjax_files, _ = _best_time(
            lambda: list(pool.map(_msjax_file, paths, chunksize=chunk)), args.repeat
        )
    t_single, _ = _best_time(lambda: [utterance_features(w, CFG) for w in wavs], args.repeat)
    t_peer, theirs = _best_time(lambda: [peer_features(w) for w in wavs], args.repeat)
    t_peer_files, _ = _best_time(lambda: [_peer_file(p) for p in paths], args.repeat)

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = [
        ("features only", t_msjax, t_peer),
        ("decode+resample+features", t_msjax_files, t_peer_files),
    ]
    for what, ours_s, peer_s in rows:
        print(
            f"what: {what} | msjax {_rate(audio_hours, ours_s):,.0f} h/h "
            f"({args.workers} workers, {ours_s:.2f} s) | peer {_rate(audio_hours, peer_s):,.0f} "
            f"h/h (librosa loop, 1 process, {peer_s:.2f} s) | ratio {peer_s / ours_s:.1f}x"
        )
    print(
        f"msjax in one process, features only: {_rate(audio_hours, t_single):,.0f} h/h "
        f"({t_single:.2f} s; ratio to peer {t_peer / t_single:.1f}x)"
    )
    print(
        f"parity with peer: max |diff| mfcc {_max_diff(ours, theirs, 'mfcc'):.2e}, "
        f"spec {_max_diff(ours, theirs, 'spec'):.2e} dB"
    )
    print(f"peak memory: {own:.0f} MiB this process, {workers:.0f} MiB largest worker")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: MFCC + log-spectrogram extraction throughput, msjax against CA-MSER-style librosa.

Throughput is hours of audio processed per hour of wall-clock time (h/h), over the
EMODB copy beside the repository (535 utterances of 2 s, about 18 minutes of audio).
Target: at least 1000 h/h for msjax on the 2-core CPU it was written on.

  msjax: the library's parallel entry points, one worker process per core:
         `iter_utterance_features` (pre-emphasis, MFCC, log spectrogram) and
         `iter_file_features` (the same after `load_audio`: decode, mono, soxr HQ).
  peer:  what CA-MSER does, PyTorch-free: a plain librosa loop over utterances in one
         process (librosa.effects.preemphasis, librosa.feature.mfcc, librosa.stft +
         amplitude_to_db; `librosa.load(sr=16000)`, also soxr HQ, for the files).
         Its mel product is a multi-threaded BLAS call, so it may keep more than
         one core busy.

Two workloads: "features" (waveforms already decoded to 16 kHz in memory; msjax
ships them to its workers) and "files" (decode + resample + features). msjax in one
process (`workers=1`) is printed as well, to separate the per-core speed-up from the
parallel one. Each figure is the best of --repeat passes, msjax and peer passes
alternating so that both see the same machine load. Not timed: librosa's numba
compilation and the start of the worker processes (printed once; the pool is
warmed before each pass because idle workers exit after 10 s, which the peer's
passes outlast). The first round's features of both sides are compared and the
largest absolute difference printed. "cores busy" is the CPU time of this process
and its workers over the wall time of the pass. Peak memory is the maximum resident
set of this process (which holds both sides' features) and of the largest worker.

    python bench/features.py [--data DIR] [--workers N] [--repeat N] [--limit N]

Limits: wall-clock figures depend on what else runs: on a shared machine the pool
gets only the idle cores ("cores busy" and the load averages show how many). The
clips are all 2 s long, so long utterances are not measured. Reading /proc for
CPU time and worker memory works on Linux only (elsewhere they read as 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
from joblib.externals.loky import get_reusable_executor

from msjax.features.acoustic import FeatureConfig
from msjax.features.audio import load_audio
from msjax.features.pool import default_workers, iter_file_features, iter_utterance_features

CFG = FeatureConfig()
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"
TARGET = 1000.0  # h/h

Features = dict[str, np.ndarray]


def peer_features(wav: np.ndarray) -> Features:
    """CA-MSER's per-utterance recipe with plain librosa calls (16 kHz input)."""
    x = librosa.effects.preemphasis(wav, coef=CFG.preemphasis, zi=[0.0])
    stft = librosa.stft(x, n_fft=800, hop_length=160, win_length=640, window="hamming")
    spec = librosa.amplitude_to_db(np.abs(stft), ref=np.max)[:200]
    mfcc = librosa.feature.mfcc(y=x, sr=CFG.sample_rate, n_mfcc=40, hop_length=160, htk=True).T
    return {"mfcc": mfcc, "spec": spec}


def peer_file(path: str) -> Features:
    """librosa.load resamples with soxr HQ, as `msjax.features.audio.load_audio` does."""
    wav, _ = librosa.load(path, sr=CFG.sample_rate)
    return peer_features(wav)


def _children() -> list[Path]:
    """/proc entries of this process's live children (the pool workers); [] off Linux."""
    me, found = str(os.getpid()), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # The command name in field 2 may hold spaces; the parent pid follows it.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.append(entry)
    return found


def _cpu_seconds() -> float:
    """CPU time of this process and of its live children so far."""
    ticks = 0
    for child in _children():
        try:
            fields = (child / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return time.process_time() + ticks / os.sysconf("SC_CLK_TCK")


def _largest_child_mib() -> float:
    """Peak resident set (VmHWM) of the largest live child, in MiB.

    RUSAGE_CHILDREN is no use here: a child started by fork + exec inherits the
    parent's high-water mark at the fork.
    """
    peak = 0
    for child in _children():
        try:
            status = (child / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def _max_diff(ours: list[Features], theirs: list[Features], key: str) -> float:
    return max(float(np.abs(a[key] - b[key]).max()) for a, b in zip(ours, theirs, strict=True))


_HOLD_SECONDS = 0.3


def _hold_worker(_: int) -> int:
    import msjax.features.pool  # noqa: F401  (what a feature task loads first)

    # Long enough that a started worker leaves the other tasks of a round to others.
    time.sleep(_HOLD_SECONDS)
    return os.getpid()


def warm_pool(workers: int) -> float:
    """Starts the pool `msjax.features.pool` uses (loky's reusable one); returns the seconds.

    Its workers exit after 10 s idle, and a call that has to start them pays their
    imports (1-2 s): the timed passes measure extraction, not this start-up. Rounds
    of one task per worker run until one round reaches every worker.
    """
    start = time.perf_counter()
    pool = get_reusable_executor(max_workers=workers)
    while len(set(pool.map(_hold_worker, range(workers)))) < workers:
        pass
    return time.perf_counter() - start


@dataclasses.dataclass
class Timing:
    """The fastest pass of one run: wall seconds and cores kept busy."""

    seconds: float = float("inf")
    cores: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="EMODB directory")
    parser.add_argument("--workers", type=int, default=default_workers(), help="msjax workers")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per figure")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files")
    args = parser.parse_args()
    # librosa warns on clips shorter than n_fft; centred frames are zero-padded anyway.
    warnings.filterwarnings("ignore", message="n_fft=.*is too large")

    paths = sorted(str(p) for p in (args.data / "wav").glob("*.wav"))[: args.limit]
    if not paths:
        raise SystemExit(f"{args.data}: no wav/*.wav files")
    wavs = [load_audio(p) for p in paths]
    hours = sum(w.shape[0] for w in wavs) / CFG.sample_rate / 3600.0
    print(f"data: {len(paths)} utterances, {hours * 60:.1f} min of audio ({args.data.name})")
    print(
        f"machine: {os.cpu_count()} CPUs, msjax workers {args.workers}, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )

    pooled = args.workers > 1
    runs: dict[str, Callable[[], list[Features]]] = {
        "msjax features": lambda: list(iter_utterance_features(wavs, CFG, workers=args.workers)),
        "peer features": lambda: [peer_features(w) for w in wavs],
        "msjax files": lambda: [f for _, f in iter_file_features(paths, CFG, workers=args.workers)],
        "peer files": lambda: [peer_file(p) for p in paths],
        "msjax 1 process": lambda: list(iter_utterance_features(wavs, CFG, workers=1)),
    }
    if pooled:
        print(f"worker start-up: {warm_pool(args.workers):.2f} s (again after 10 s idle)")
    peer_features(wavs[0])  # compiles librosa's numba kernels

    best = {name: Timing() for name in runs}
    diffs: dict[str, tuple[float, float]] = {}
    worker_mib = 0.0
    for round_index in range(args.repeat):
        kept: dict[str, list[Features]] = {}  # first round: features awaiting comparison
        for name, run in runs.items():
            if pooled and name in ("msjax features", "msjax files"):
                warm_pool(args.workers)
            cpu, start = _cpu_seconds(), time.perf_counter()
            out = run()
            seconds = time.perf_counter() - start
            if seconds < best[name].seconds:
                best[name] = Timing(seconds, (_cpu_seconds() - cpu) / seconds)
            worker_mib = max(worker_mib, _largest_child_mib())
            what = name.split()[-1]
            if round_index == 0 and what in ("features", "files"):
                kept[name] = out
                if f"msjax {what}" in kept and f"peer {what}" in kept:
                    ours, peer = kept.pop(f"msjax {what}"), kept.pop(f"peer {what}")
                    diffs[what] = (_max_diff(ours, peer, "mfcc"), _max_diff(ours, peer, "spec"))
                    del ours, peer
            del out

    def rate(name: str) -> float:
        return hours / (best[name].seconds / 3600.0)

    def figure(name: str) -> str:
        timing = best[name]
        return f"{rate(name):,.0f} h/h ({timing.seconds:.2f} s, {timing.cores:.1f} cores busy)"

    for what, label in (("features", "features only"), ("files", "decode+resample+features")):
        ours, peer = f"msjax {what}", f"peer {what}"
        met = "met" if rate(ours) >= TARGET else "NOT met"
        print(
            f"what: {label} | msjax {figure(ours)}, {args.workers} workers | "
            f"peer {figure(peer)}, librosa loop | ratio {rate(ours) / rate(peer):.1f}x | "
            f"target {TARGET:,.0f} h/h {met}"
        )
        print(f"  max |msjax - peer|: mfcc {diffs[what][0]:.2e}, spec {diffs[what][1]:.2e} dB")
    print(
        f"what: features only, msjax in 1 process | {figure('msjax 1 process')} | "
        f"ratio to peer {rate('msjax 1 process') / rate('peer features'):.1f}x"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {own:,.0f} MiB this process, {worker_mib:,.0f} MiB largest worker")


if __name__ == "__main__":
    main()

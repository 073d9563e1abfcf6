"""Features of a whole corpus, spread over one worker process per core.

`iter_file_features` (decode, resample, MFCC, spectrogram: msjax.features.acoustic'
`file_features`) and `iter_utterance_features` (the features of waveforms already in
memory) hand utterances to a pool of worker processes in small batches and yield the
results in input order, with a bounded number of batches in flight. A bad file ends
the iteration with its error once everything before it has been yielded.
`bench/features.py` measures both against a plain librosa loop.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
from joblib.externals.loky import get_reusable_executor

from msjax.errors import MsjaxError, UsageError
from msjax.features.acoustic import FeatureConfig, file_features, utterance_features

# Utterances per pool task (a 2 s clip takes about 2 ms): enough to amortise the
# inter-process round trip, few enough to keep both workers busy to the end.
_TASK_UTTERANCES = 8
# Tasks queued per worker ahead of the consumer; bounds the results held in memory.
_TASKS_AHEAD = 4


def default_workers() -> int:
    """The number of CPU cores this process may run on (one feature worker per core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS and Windows
        return os.cpu_count() or 1


def iter_utterance_features(
    wavs: Iterable[np.ndarray], cfg: FeatureConfig, *, workers: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """`utterance_features` of many waveforms, computed by a pool of worker processes.

    Args:
        wavs: raw [N_i] waveforms at `cfg.sample_rate`.
        cfg: feature configuration.
        workers: worker processes; None for one per core, 1 to compute in this process.

    Returns:
        An iterator over the features of each waveform, in input order.
    """
    return _ordered_map(utterance_features, wavs, cfg, workers)


def iter_file_features(
    paths: Iterable[str | os.PathLike], cfg: FeatureConfig, *, workers: int | None = None
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """`file_features` of many files (decode, resample, features) in worker processes.

    This is the fast path for preparing a corpus: every step runs in the workers, so
    N idle cores give close to N times the throughput of a loop over `file_features`.

    Args:
        paths: audio files, any format `load_audio` reads.
        cfg: feature configuration.
        workers: worker processes; None for one per core, 1 to compute in this process.

    Returns:
        An iterator over (wav, features) of each file, in input order. It raises the
        `AudioError` of the first unusable file once every file before it has been
        yielded; work queued behind it is cancelled.
    """
    return _ordered_map(file_features, map(os.fspath, paths), cfg, workers)


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def _ordered_map(
    fn: Callable[[_Item, FeatureConfig], _Result],
    items: Iterable[_Item],
    cfg: FeatureConfig,
    workers: int | None,
) -> Iterator[_Result]:
    """fn(item, cfg) for every item, in order, by a process pool unless workers == 1."""
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UsageError(f"feature extraction: workers must be at least 1, got {workers}")
    if workers == 1:
        return (fn(item, cfg) for item in items)
    task = functools.partial(_run_batch, fn, cfg=cfg)
    return _pooled(task, _batched(items, _TASK_UTTERANCES), workers)


def _run_batch(
    fn: Callable[[_Item, FeatureConfig], _Result], items: Sequence[_Item], cfg: FeatureConfig
) -> tuple[list[_Result], MsjaxError | None]:
    """Runs in a worker: the results up to the first bad input, and its error."""
    results = []
    for item in items:
        try:
            results.append(fn(item, cfg))
        except MsjaxError as error:
            return results, error
    return results, None


def _pooled(
    task: Callable[[list[_Item]], tuple[list[_Result], MsjaxError | None]],
    batches: Iterator[list[_Item]],
    workers: int,
) -> Iterator[_Result]:
    # loky starts clean processes (no fork of this one, whose JAX or BLAS threads may
    # hold locks), needs no `__main__` guard, and keeps its workers for the next call.
    pool = get_reusable_executor(max_workers=workers)
    pending: collections.deque[Future] = collections.deque()

    def finish_oldest() -> Iterator[_Result]:
        results, error = pending.popleft().result()
        yield from results
        if error is not None:
            raise error

    try:
        for batch in batches:
            pending.append(pool.submit(task, batch))
            if len(pending) >= workers * _TASKS_AHEAD:
                yield from finish_oldest()
        while pending:
            yield from finish_oldest()
    finally:
        # Also runs when the consumer stops early or a file failed: drop queued work.
        for future in pending:
            future.cancel()


def _batched(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    batch: list[_Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

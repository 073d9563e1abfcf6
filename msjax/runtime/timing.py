"""Where a training run spends its time: an optional recorder its phases report to.

Off unless a caller (a benchmark) records: then `section` and `timed` add wall
seconds per phase to the caller's dict. Off, `section` does nothing and `timed`
returns the function itself, so a normal run pays nothing.

    totals = {}
    with timing.recording(totals):
        train_and_evaluate(config, workdir)

The phases `train_and_evaluate` reports:

    features     preparing the features (decoding, MFCC/spectrogram, SSL extraction)
    train_step   each jitted train step, blocked on its outputs (so it includes the
                 device time the loop would otherwise overlap with host work)
    eval_step    each jitted eval step, likewise
    checkpoint   each checkpoint write (resume point and best model)

A phase's first call (the steps' compilation) is kept apart as `<name>_first`, and
`<name>_calls` counts the calls.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import jax

F = TypeVar("F", bound=Callable)

_totals: dict | None = None


@contextlib.contextmanager
def recording(totals: dict) -> Iterator[dict]:
    """Phases reported inside the block add their seconds to `totals`."""
    global _totals
    previous, _totals = _totals, totals
    try:
        yield totals
    finally:
        _totals = previous


def _add(totals: dict, name: str, seconds: float) -> None:
    key = name if f"{name}_calls" in totals else f"{name}_first"
    totals[key] = totals.get(key, 0.0) + seconds
    totals[f"{name}_calls"] = totals.get(f"{name}_calls", 0) + 1


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Times the block as one call of phase `name` while recording."""
    totals = _totals
    if totals is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _add(totals, name, time.perf_counter() - start)


def timed(name: str, fn: F, block: bool = False) -> F:
    """`fn`, timed as phase `name` (waiting for its outputs when `block`) when this is
    called while recording; otherwise `fn` itself."""
    totals = _totals
    if totals is None:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if block:
            jax.block_until_ready(out)
        _add(totals, name, time.perf_counter() - start)
        return out

    return wrapper  # type: ignore[return-value]

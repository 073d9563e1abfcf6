"""Progress bars for long loops (feature preparation, epochs, prediction).

One place decides how progress is shown: tqdm on stderr, drawn only when stderr is a
terminal, so logs of batch jobs carry the per-epoch lines and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tqdm import tqdm


def bar(items: Iterable | None = None, *, desc: str, total: float | None = None,
        unit: str = "it", unit_scale: bool = False, leave: bool = False) -> tqdm:
    """A progress bar over `items` (or a manual one, updated by `.update(n)`)."""
    return tqdm(items, desc=desc, total=total, unit=unit, unit_scale=unit_scale,
                leave=leave, disable=None)


def stage(desc: str) -> Callable[[Iterable], Iterable]:
    """`items -> items` with a bar named `desc`, for functions that take a progress hook."""
    return lambda items: bar(items, desc=desc)


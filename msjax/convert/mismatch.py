"""The one error every porter raises when a checkpoint does not hold what it expects.

One line naming the source, what it should be, and the offending tensor names:

    alexnet.npz: not AlexNet features weights (missing: features_6/bias; wrong shape:
    features_8/kernel [3, 3, 256, 256] (expects [3, 3, 384, 256]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from msjax.errors import CheckpointError

# Names listed per kind; a checkpoint of another model would otherwise print hundreds.
MAX_LISTED = 8


def wrong_shape(name: str, got: Sequence[int], want: Sequence[int]) -> str:
    """One entry of the wrong-shape list: `name [got] (expects [want])`."""
    return f"{name} {list(got)} (expects {list(want)})"


def compare(
    got: Mapping[str, Sequence[int]], want: Mapping[str, Sequence[int]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong shape) of `got` against `want` (name -> shape), sorted."""
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = [
        wrong_shape(k, got[k], want[k])
        for k in sorted(set(got) & set(want))
        if tuple(got[k]) != tuple(want[k])
    ]
    return missing, unexpected, wrong


def check(
    source: str,
    what: str,
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    wrong: Sequence[str] = (),
) -> None:
    """Raises CheckpointError `{source}: {what} (missing: ...; unexpected: ...; wrong
    shape: ...)` when any list is non-empty; at most MAX_LISTED names of each kind."""
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
            problems.append(f"{label}: {', '.join(names[:MAX_LISTED])}{more}")
    if problems:
        raise CheckpointError(f"{source}: {what} ({'; '.join(problems)})")

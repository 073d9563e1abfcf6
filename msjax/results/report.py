"""Run artifacts as text: confusion matrices (CSV), result tables, the environment record.

Every file is written atomically (msjax.io.files), so an interrupted run never leaves a
half-written results file. The figures: msjax.results.plots.
"""

from __future__ import annotations

import csv
import io
import math
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from msjax.io.files import atomic_write

# Report keys -> the distributions whose versions they record.
_DISTRIBUTIONS = {
    "jax": "jax",
    "flax": "flax",
    "optax": "optax",
    "orbax": "orbax-checkpoint",
    "transformers": "transformers",
    "librosa": "librosa",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
}
_CORNER = "true\\pred"


def write_confusion_csv(cm: np.ndarray, labels: Sequence[str], path: Path) -> None:
    """Writes confusion matrix `cm` [C, C] (rows = true) as CSV.

    The header row is the corner cell "true\\pred" followed by the labels; each
    following row is a true label followed by its counts.
    """
    cm = square_confusion(cm, labels)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([_CORNER, *labels])
    for label, row in zip(labels, cm):
        writer.writerow([label, *(cell_text(v) for v in row)])
    _atomic_write(path, buf.getvalue().encode())


def read_confusion_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """Reads a file written by `write_confusion_csv`; returns (cm [C, C], labels)."""
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    labels = header[1:]
    if [r[0] for r in rows] != labels or any(len(r) != len(header) for r in rows):
        raise ValueError(f"{path}: not a confusion matrix CSV (row and column labels differ)")
    values = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float64)
    if np.all(values == np.round(values)):
        return values.astype(np.int64), labels
    return values, labels


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """Formats a mean and std as "72.10 ± 1.23"."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_interval(low: float, high: float, digits: int = 2) -> str | None:
    """Formats an interval as "[-2.50, 0.04]"; None (shown "-") when it is undefined (NaN)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def format_p_value(p: float) -> str | None:
    """Formats a p-value as "0.056" or "<0.001"; None (shown "-") when it is undefined (NaN)."""
    if not math.isfinite(p):
        return None
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    digits: int = 2,
) -> str:
    """Formats `rows` as an aligned plain-text table.

    Used for per-fold summaries, the final mean ± std table and ablation
    comparisons (the paper's Tables 3-4).

    Args:
        rows: one mapping per row; keys not in `columns` are ignored.
        columns: the keys to show, in order; they are also the headers.
        digits: decimals for floats. A (mean, std) pair is shown as
            "mean ± std"; a missing value or None as "-".

    Returns:
        The header, a rule and one line per row; numeric columns right-aligned.
    """
    cells = [[_format_value(row.get(c), digits) for c in columns] for row in rows]
    numeric = [
        all(_is_number(row.get(c)) for row in rows if row.get(c) is not None) for c in columns
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(columns)), rule, *(line(r) for r in cells)])


def environment_info(repo: Path | None = None) -> dict[str, Any]:
    """Describes the software and hardware a run used, for results.json.

    Args:
        repo: the git checkout to describe; by default the one this package is
            in (None when it is installed outside a checkout).

    Returns:
        python and library versions (None where not installed), platform, jax
        backend and devices, and the git revision and whether the work tree had
        uncommitted changes (None where unknown).
    """
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            info[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[key] = None
    try:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:  # noqa: BLE001 - no usable jax backend is worth recording, not fatal
        info["jax_backend"] = None
        info["jax_devices"] = []
    info.update(_git_info(Path(repo) if repo else _checkout()))
    return info


def _checkout() -> Path:
    """The directory holding the msjax package: its checkout, when it is one."""
    import msjax

    return Path(msjax.__file__).resolve().parents[1]


def _git_info(repo: Path) -> dict[str, Any]:
    """Returns git_revision and git_dirty for `repo`, or None for both."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()

    try:
        # Only describe `repo` itself, not some unrelated repository enclosing it.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != repo.resolve():
            return {"git_revision": None, "git_dirty": None}
        revision = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": None, "git_dirty": None}
    return {"git_revision": revision, "git_dirty": dirty}


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), "the file")


def square_confusion(cm: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """`cm` as an array, checked to be [C, C] for the C `labels`."""
    cm = np.asarray(cm)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix shape {cm.shape} does not fit {len(labels)} labels")
    return cm


def cell_text(value: Any) -> str:
    """A count as an integer, anything else as a float's repr (CSV cells, plot labels)."""
    value = np.asarray(value).item()
    return str(value) if isinstance(value, int) else repr(float(value))


def _is_number(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_is_number(v) for v in value)
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _format_value(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple) and len(value) == 2 and _is_number(value):
        return format_mean_std(float(value[0]), float(value[1]), digits)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)



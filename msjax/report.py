"""Run artifacts: confusion matrices (CSV, PNG), text tables, JSON, t-SNE plots.

Every file is written atomically (a temporary file in the same directory, fsynced,
then renamed), so an interrupted run never leaves a half-written results file.
Plots draw on matplotlib's Agg canvas directly, without pyplot's global state, so
they work on machines without a display and from several threads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from msjax.files import atomic_write

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
    cm = _square(cm, labels)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([_CORNER, *labels])
    for label, row in zip(labels, cm):
        writer.writerow([label, *(_cell(v) for v in row)])
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


def plot_confusion_png(
    cm: np.ndarray,
    labels: Sequence[str],
    path: Path,
    normalize: bool = True,
    title: str | None = None,
) -> None:
    """Draws confusion matrix `cm` [C, C] as an annotated heat map (PNG).

    Args:
        cm: counts, rows = true classes.
        labels: C class names, used on both axes.
        path: output file.
        normalize: divide each row by its support, so cells are per-class
            recall fractions (the paper's Figs. 4-6); rows with no support stay 0.
        title: optional figure title.
    """
    cm = _square(cm, labels)
    values = cm.astype(np.float64)
    if normalize:
        support = values.sum(axis=1, keepdims=True)
        values = np.divide(values, support, out=np.zeros_like(values), where=support > 0)
    n = len(labels)
    side = max(4.0, 0.8 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, shrink=0.8)
    for i in range(n):
        for j in range(n):
            text = f"{values[i, j]:.2f}" if normalize else _cell(cm[i, j])
            color = "white" if values[i, j] > vmax / 2 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    if title:
        ax.set_title(title)
    _save_figure(fig, path)


def plot_tsne(
    features: np.ndarray,
    labels: Sequence[int],
    label_names: Sequence[str],
    path: Path,
    title: str | None = None,
    seed: int = 0,
    perplexity: float = 30.0,
) -> np.ndarray:
    """Embeds `features` in 2-D with t-SNE and plots them coloured by class.

    Used for the paper's Figs. 7-8 (pooled SSL features with and without the
    enhancement).

    Args:
        features: [N, D] one vector per utterance or segment; N >= 2.
        labels: [N] class indices into `label_names`.
        label_names: class names for the legend.
        path: output PNG.
        title: optional figure title.
        seed: t-SNE random state.
        perplexity: clipped to (N - 1) / 3 (at least 1) for small N, since t-SNE
            needs perplexity < N.

    Returns:
        [N, 2] the embedding that was plotted.
    """
    from sklearn.manifold import TSNE  # slow to import; only t-SNE needs it

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n = features.shape[0]
    if features.ndim != 2 or labels.shape != (n,) or n < 2:
        raise ValueError(
            f"expected features [N, D] and labels [N] with N >= 2, got "
            f"{features.shape} and {labels.shape}"
        )
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca" if features.shape[1] >= 2 else "random",
        random_state=seed,
        n_jobs=1,
    )
    embedding = tsne.fit_transform(features)

    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _class_colors(len(label_names))
    for k, name in enumerate(label_names):
        mask = labels == k
        if mask.any():
            ax.scatter(*embedding[mask].T, s=10, color=colors[k], label=f"{k}: {name}")
    ax.legend(markerscale=2, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    _save_figure(fig, path)
    return embedding


def plot_timeline(
    starts: np.ndarray,
    ends: np.ndarray,
    probabilities: np.ndarray,
    label_names: Sequence[str],
    path: Path,
    title: str | None = None,
) -> None:
    """Class probabilities over a recording, one step line per class.

    Args:
        starts, ends: [S] each segment's start and end in seconds, tiling the recording.
        probabilities: [S, C] each segment's class probabilities.
        label_names: [C] class names for the legend.
        path: output PNG.
        title: optional figure title (the file's name).
    """
    probabilities = np.asarray(probabilities)
    # Minutes read better than seconds past ten of them (calls, meetings).
    scale, unit = (60.0, "min") if ends[-1] > 600 else (1.0, "s")
    edges = np.append(np.asarray(starts, np.float64), ends[-1]) / scale
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _class_colors(len(label_names))
    for k, name in enumerate(label_names):
        ax.stairs(probabilities[:, k], edges, baseline=None, color=colors[k], label=name,
                  linewidth=1.2)
    ax.set_xlim(0, edges[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        ax.set_title(title)
    _save_figure(fig, path)


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


def write_json(obj: Any, path: Path) -> None:
    """Writes `obj` as indented JSON, atomically.

    numpy scalars and arrays, tuples and paths are converted; non-finite floats
    become null, so the file is strict JSON.
    """
    _atomic_write(path, json_bytes(obj))


def write_text(text: str, path: Path) -> None:
    """Writes `text` to `path`, atomically."""
    _atomic_write(path, text.encode())


def json_bytes(obj: Any) -> bytes:
    """The bytes `write_json` writes for `obj`."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
    return (text + "\n").encode()


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
    info.update(_git_info(Path(repo) if repo else Path(__file__).resolve().parents[1]))
    return info


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


def _save_figure(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    _atomic_write(path, buf.getvalue())


def _class_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]


def _square(cm: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix shape {cm.shape} does not fit {len(labels)} labels")
    return cm


def _cell(value: Any) -> str:
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

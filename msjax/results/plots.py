"""Run figures: confusion matrices, t-SNE scatter plots, emotion timelines (PNG).

Plots draw on matplotlib's Agg canvas directly, without pyplot's global state, so they
work on machines without a display and from several threads; each file is written
atomically (msjax.io.files).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from msjax.io.files import atomic_write
from msjax.results import report


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
    cm = report.square_confusion(cm, labels)
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
            text = f"{values[i, j]:.2f}" if normalize else report.cell_text(cm[i, j])
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


def _save_figure(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data), "the figure")


def _class_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]

"""Emotion over the course of a recording: one row per segment, and its plot.

`bin/predict --timeline=segments.csv` writes, besides each file's prediction, one row per
3 s segment (path, start, end in seconds, and the segment's probability of each emotion)
as segments are done (a long recording's window by window, each row flushed);
`--timeline_plot=folder/` draws each file's rows as a PNG once the file is done. The
segments tile the file: segment k spans [k * segment_seconds, (k + 1) * segment_seconds),
the last one ending at the file's end (the model saw it zero-padded to a whole segment).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msjax.errors import UsageError
from msjax.inference.predict import FileResult, RowWriter
from msjax.results import plots


def segment_row(path: Path, k: int, logprobs: np.ndarray, labels: Sequence[str],
                segment_seconds: float, seconds: float | None = None) -> dict:
    """Segment k's row: path, start, end (s; capped at the file's length `seconds`),
    probabilities (the segment's softmax, from its log-probabilities [C])."""
    probs = np.exp(np.asarray(logprobs, np.float64))
    end = (k + 1) * segment_seconds
    return {
        "path": str(path),
        "start": k * segment_seconds,
        "end": end if seconds is None else min(end, seconds),
        "probabilities": {name: float(v) for name, v in zip(labels, probs)},
    }


def segment_rows(result: FileResult, labels: Sequence[str], segment_seconds: float) -> list[dict]:
    """One row per segment of a predicted file (`segment_row`); the probabilities sum
    to one per row."""
    return [
        segment_row(result.path, k, logprobs, labels, segment_seconds, result.seconds)
        for k, logprobs in enumerate(result.segment_logprobs)
    ]


class TimelineWriter(RowWriter):
    """Segment rows as they come: path, start, end, p_<label>... (CSV or JSONL)."""

    def __init__(self, out: Path, labels: Sequence[str]):
        self.labels = list(labels)
        super().__init__(out, ["path", "start", "end", *[f"p_{n}" for n in labels]],
                         "the timeline")

    def write(self, row: dict) -> None:
        probs = row["probabilities"]
        self.write_row(row, [
            row["path"], f"{row['start']:.6f}", f"{row['end']:.6f}",
            *[f"{probs[n]:.6f}" for n in self.labels],
        ])


def check_plots(paths: Sequence[Path], folder: Path | None, overwrite: bool) -> None:
    """Refuses, unless `overwrite`, a --timeline_plot folder already holding a PNG that
    this run would draw.

    Raises:
      UsageError: naming the first such file and how many there are.
    """
    if folder is None or overwrite:
        return
    taken = [png for png in plot_paths(paths, folder) if png.exists()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UsageError(
            f"--timeline_plot={folder}: {taken[0]} exists{more}; pass --overwrite to replace"
        )


def plot_paths(paths: Sequence[Path], folder: Path) -> list[Path]:
    """The PNG of each input file in `folder`: <stem>.png, then <stem>-2.png, ... for
    files whose names (without suffix) repeat."""
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        suffix = "" if seen[path.stem] == 1 else f"-{seen[path.stem]}"
        out.append(folder / f"{path.stem}{suffix}.png")
    return out


class TimelineOutput:
    """What --timeline and --timeline_plot ask for, file by file as results come.

    Args:
      rows: the .csv/.jsonl for segment rows, or None.
      plots: the folder for one PNG per input file, or None.
      paths: the input files, in the order their results come.
      labels: class names.
      segment_seconds: the checkpoint's segment length.
    """

    def __init__(self, rows: Path | None, plots: Path | None, paths: Sequence[Path],
                 labels: Sequence[str], segment_seconds: float):
        self.labels, self.segment_seconds = list(labels), segment_seconds
        self.writer = TimelineWriter(rows, labels) if rows else None
        self.pngs = plot_paths(paths, plots) if plots else None
        self._written: dict[int, int] = {}  # input index -> its rows written so far

    def add_segments(self, index: int, path: Path, first: int, logprobs: np.ndarray) -> None:
        """Writes the rows of segments first.. of input `index` before the file is done
        (`predict_files`' on_segments: never a file's last segment)."""
        if self.writer is None:
            return
        for k, row in enumerate(logprobs, first):
            self.writer.write(segment_row(path, k, row, self.labels, self.segment_seconds))
        self._written[index] = first + len(logprobs)

    def add(self, index: int, result: FileResult) -> None:
        """Writes the rows not written yet and the plot of input `index` (nothing more
        for a failed file)."""
        written = self._written.pop(index, 0)
        if result.segment_logprobs is None or not (self.writer or self.pngs):
            return
        rows = segment_rows(result, self.labels, self.segment_seconds)
        for row in rows[written:] if self.writer else ():
            self.writer.write(row)
        if self.pngs:
            plots.plot_timeline(
                [r["start"] for r in rows], [r["end"] for r in rows],
                [[r["probabilities"][n] for n in self.labels] for r in rows],
                self.labels, self.pngs[index], title=result.path.name,
            )

    def close(self) -> None:
        if self.writer:
            self.writer.close()

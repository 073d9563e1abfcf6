"""Checks shared by the dataset loaders: directory layout, audio headers, expected counts.

A wrong layout raises `LayoutError` whose first line names the root and what is missing,
followed by the expected tree, so users see what to fix rather than a traceback. Counts
that differ from a corpus' published ones are logged with per-class and per-speaker
counts and raise `DataError` unless the caller passes `allow_count_mismatch=True`
(a partial or re-cut copy is then used as it is).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import soundfile as sf

from msjax.data.records import Dataset
from msjax.errors import AudioError, DataError, LayoutError

log = logging.getLogger(__name__)


def layout_error(root: Path, problem: str, tree: str, markers: Sequence[str] = ()) -> LayoutError:
    """Builds a LayoutError: `<root>: <problem>`, a hint if the corpus sits one level
    down, then the expected tree.

    Args:
        root: The directory the user gave.
        problem: What is missing or wrong, e.g. "missing Session3/sentences/wav".
        tree: The expected layout, one entry a line.
        markers: Relative paths whose presence in a subdirectory of `root` suggests the
            user meant that subdirectory.
    """
    lines = [f"{root}: {problem}"]
    nested = _nested_root(root, markers)
    if nested is not None:
        lines.append(f"(the corpus seems to be in {nested}; pass that directory instead)")
    lines.append("expected layout:")
    lines.extend("  " + line for line in tree.strip("\n").splitlines())
    return LayoutError("\n".join(lines))


def require_dirs(
    root: Path, relative: Sequence[str], tree: str, markers: Sequence[str] = ()
) -> None:
    """Raises a LayoutError listing every directory of `relative` missing under `root`."""
    if not root.is_dir():
        raise layout_error(root, "directory does not exist", tree)
    missing = [rel for rel in relative if not (root / rel).is_dir()]
    if missing:
        raise layout_error(root, "missing " + ", ".join(f"{m}/" for m in missing), tree, markers)


def visible_files(directory: Path, suffix: str) -> list[Path]:
    """Sorted files of `directory` ending in `suffix` (any case), skipping hidden files
    such as the `._name` resource forks that macOS archives carry."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == suffix
    )


def audio_duration(path: Path) -> float:
    """Duration in seconds from the file header (no decoding).

    Raises:
        AudioError: the header cannot be read.
    """
    try:
        info = sf.info(str(path))
    except RuntimeError as err:  # soundfile's errors derive from it
        raise AudioError(f"{path}: cannot read audio header ({err})") from None
    return info.frames / info.samplerate


def check_counts(
    dataset: Dataset,
    root: Path,
    expected_total: int,
    expected_classes: Mapping[str, int] | None = None,
    expected_speakers: int | None = None,
    *,
    allow_count_mismatch: bool = False,
) -> None:
    """Compares a loaded corpus with its published counts.

    On a mismatch the per-class and per-speaker counts are logged as a warning; then
    DataError is raised unless `allow_count_mismatch` is set.

    Args:
        dataset: The loaded corpus.
        root: Its directory (named in the message).
        expected_total: Published number of utterances.
        expected_classes: Published utterances per label, if known.
        expected_speakers: Published number of speakers, if known.
        allow_count_mismatch: Only warn.
    """
    classes = dataset.class_counts()
    problems = []
    if len(dataset) != expected_total:
        problems.append(f"{len(dataset)} utterances, expected {expected_total}")
    if expected_classes is not None:
        problems += [
            f"{label} {classes[label]} (expected {n})"
            for label, n in expected_classes.items()
            if classes[label] != n
        ]
    if expected_speakers is not None and len(dataset.speakers) != expected_speakers:
        problems.append(f"{len(dataset.speakers)} speakers, expected {expected_speakers}")
    if not problems:
        return
    per_class = ", ".join(f"{k} {v}" for k, v in classes.items())
    per_speaker = ", ".join(f"{k} {v}" for k, v in dataset.speaker_counts().items())
    message = (
        f"{root}: {dataset.name} counts differ from the published ones: {'; '.join(problems)}"
        f" [per class: {per_class}] [per speaker: {per_speaker}]"
    )
    log.warning("%s", message)
    if not allow_count_mismatch:
        raise DataError(message + "; pass allow_count_mismatch=True to use this copy as it is")


def _nested_root(root: Path, markers: Sequence[str]) -> Path | None:
    """The first subdirectory of `root` holding all of `markers`, if any."""
    if not markers or not root.is_dir():
        return None
    for child in sorted(root.iterdir()):
        if child.is_dir() and all((child / m).exists() for m in markers):
            return child
    return None

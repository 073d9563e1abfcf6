"""CREMA-D (Crowd-sourced Emotional Multimodal Actors Dataset), audio part.

Layout: `AudioWAV/<actor:4>_<sentence:3>_<emotion:3>_<level:2>.wav`, e.g.
`AudioWAV/1001_DFA_ANG_XX.wav` (actors 1001-1091, 12 sentences, level LO/MD/HI or XX
unspecified). Emotion codes and the class order:

    0 anger (ANG), 1 disgust (DIS), 2 fear (FEA), 3 happiness (HAP), 4 sadness (SAD),
    5 neutral (NEU)

The corpus has 7,442 clips from 91 actors: 1,271 per emotion, neutral 1,087. The module
turns the tree into manifest rows, so CREMA-D loads through the manifest's code path
(`msjax.data.manifest.build_dataset`).
"""

from __future__ import annotations

import re
from pathlib import Path

from msjax.data import manifest
from msjax.data.layout import layout_error, require_dirs, visible_files
from msjax.data.records import Dataset
from msjax.errors import LabelError

EMOTIONS: dict[str, str] = {
    "ANG": "anger",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happiness",
    "SAD": "sadness",
    "NEU": "neutral",
}
LABELS: tuple[str, ...] = tuple(EMOTIONS.values())
EXPECTED_TOTAL = 7442
EXPECTED_SPEAKERS = 91
EXPECTED_CLASSES: dict[str, int] = {label: 1271 for label in LABELS} | {"neutral": 1087}
TREE = """\
<root>/
  AudioWAV/
    1001_DFA_ANG_XX.wav   <actor:4>_<sentence:3>_<emotion:ANG|DIS|FEA|HAP|SAD|NEU>_<level:2>.wav
    ...
"""

_NAME = re.compile(
    r"(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})"
)


def parse_name(path: Path) -> tuple[str, str]:
    """Actor and canonical label of a CREMA-D file name.

    Raises:
        LabelError: the name does not follow the convention or has an unknown emotion code.
    """
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise LabelError(
            f"{path}: file name does not match <actor>_<sentence>_<emotion>_<level>.wav"
        )
    if match["emotion"] not in EMOTIONS:
        raise LabelError(
            f"{path}: unknown emotion code {match['emotion']!r} "
            f"(expected one of {', '.join(EMOTIONS)})"
        )
    return match["actor"], EMOTIONS[match["emotion"]]


def rows(root: Path) -> list[tuple[None, manifest.Row]]:
    """The manifest rows of a CREMA-D tree (paths relative to `root`).

    Raises:
        LayoutError: `root/AudioWAV` is missing or holds no wav files.
        LabelError: a file name that cannot be parsed.
    """
    root = Path(root)
    require_dirs(root, ["AudioWAV"], TREE, markers=["AudioWAV"])
    files = visible_files(root / "AudioWAV", ".wav")
    if not files:
        raise layout_error(root, "no .wav files in AudioWAV/", TREE)
    out = []
    for path in files:
        actor, label = parse_name(path)
        out.append((None, {"path": f"AudioWAV/{path.name}", "emotion": label, "speaker": actor}))
    return out


def load(root: Path, *, allow_count_mismatch: bool = False) -> Dataset:
    """Loads CREMA-D from `root` and checks the published counts.

    Args:
        root: Directory holding AudioWAV/.
        allow_count_mismatch: Only warn when counts differ from 7,442 clips / 91 actors /
            the per-class counts.

    Raises:
        LayoutError, LabelError: see `rows`. DataError: unreadable audio (every file
            listed), or counts differ and `allow_count_mismatch` is False.
    """
    counts = (EXPECTED_TOTAL, EXPECTED_CLASSES, EXPECTED_SPEAKERS)
    return manifest.load_corpus(
        "cremad", root, rows(root), LABELS, counts, allow_count_mismatch=allow_count_mismatch
    )

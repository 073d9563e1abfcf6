"""RAVDESS (Ryerson Audio-Visual Database of Emotional Speech and Song), speech part.

Layout: `Actor_<actor:2>/<modality>-<channel>-<emotion>-<intensity>-<statement>-<repetition>-
<actor>.wav`, e.g. `Actor_01/03-01-05-02-01-01-01.wav` (modality 03 audio-only, channel 01
speech). Emotion codes and the class order:

    0 neutral (01), 1 calm (02), 2 happiness (03), 3 sadness (04), 4 anger (05),
    5 fear (06), 6 disgust (07), 7 surprise (08)

The speech part has 1,440 files from 24 actors (60 each): neutral 96 (normal intensity
only), every other class 192. The module turns the tree into manifest rows, so RAVDESS
loads through the manifest's code path (`msjax.data.manifest.build_dataset`).
"""

from __future__ import annotations

import re
from pathlib import Path

from msjax.data import manifest
from msjax.data.layout import layout_error, visible_files
from msjax.data.records import Dataset
from msjax.errors import LabelError

EMOTIONS: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
LABELS: tuple[str, ...] = tuple(EMOTIONS.values())
EXPECTED_TOTAL = 1440
EXPECTED_SPEAKERS = 24
EXPECTED_CLASSES: dict[str, int] = {label: 192 for label in LABELS} | {"neutral": 96}
TREE = """\
<root>/
  Actor_01/
    03-01-05-02-01-01-01.wav   03 (audio)-01 (speech)-<emotion 01-08>-<intensity>-<statement>-
                               <repetition>-<actor>.wav
    ...
  Actor_02/
  ...
  Actor_24/
"""

_ACTOR_DIR = re.compile(r"Actor_(?P<actor>\d\d)")
_NAME = re.compile(
    r"(?P<modality>\d\d)-(?P<channel>\d\d)-(?P<emotion>\d\d)-(?P<intensity>\d\d)"
    r"-(?P<statement>\d\d)-(?P<repetition>\d\d)-(?P<actor>\d\d)"
)


def parse_name(path: Path) -> tuple[str, str]:
    """Actor and canonical label of a RAVDESS speech file name.

    Raises:
        LabelError: the name does not follow the convention, is not audio-only speech
            (modality 03, channel 01), or has an unknown emotion code.
    """
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise LabelError(f"{path}: file name does not match MM-CC-EE-II-SS-RR-AA.wav")
    if (match["modality"], match["channel"]) != ("03", "01"):
        raise LabelError(
            f"{path}: not an audio-only speech file (modality {match['modality']}, channel "
            f"{match['channel']}); msjax reads the speech part (03-01-...)"
        )
    if match["emotion"] not in EMOTIONS:
        raise LabelError(f"{path}: unknown emotion code {match['emotion']!r} (expected 01 to 08)")
    return match["actor"], EMOTIONS[match["emotion"]]


def rows(root: Path) -> list[tuple[None, manifest.Row]]:
    """The manifest rows of a RAVDESS tree (paths relative to `root`).

    Raises:
        LayoutError: `root` is missing or holds no Actor_XX folder with wav files.
        LabelError: a file name that cannot be parsed, or that names another actor
            than its folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise layout_error(root, "directory does not exist", TREE)
    actors = sorted(p for p in root.iterdir() if p.is_dir() and _ACTOR_DIR.fullmatch(p.name))
    if not actors:
        raise layout_error(root, "no Actor_XX folders", TREE, markers=["Actor_01"])
    out = []
    for folder in actors:
        for path in visible_files(folder, ".wav"):
            actor, label = parse_name(path)
            if actor != _ACTOR_DIR.fullmatch(folder.name)["actor"]:
                raise LabelError(f"{path}: names actor {actor} but lies in {folder.name}/")
            rel = path.relative_to(root).as_posix()
            out.append((None, {"path": rel, "emotion": label, "speaker": actor}))
    if not out:
        raise layout_error(root, "no .wav files in the Actor_XX folders", TREE)
    return out


def load(root: Path, *, allow_count_mismatch: bool = False) -> Dataset:
    """Loads RAVDESS speech from `root` and checks the published counts.

    Args:
        root: Directory holding Actor_01 ... Actor_24.
        allow_count_mismatch: Only warn when counts differ from 1,440 files / 24 actors /
            the per-class counts.

    Raises:
        LayoutError, LabelError: see `rows`. DataError: unreadable audio (every file
            listed), or counts differ and `allow_count_mismatch` is False.
    """
    counts = (EXPECTED_TOTAL, EXPECTED_CLASSES, EXPECTED_SPEAKERS)
    return manifest.load_corpus(
        "ravdess", root, rows(root), LABELS, counts, allow_count_mismatch=allow_count_mismatch
    )

"""EMODB (Berlin Database of Emotional Speech) loader.

Layout: `wav/<speaker:2><text:3><emotion:1><version:1>.wav`, e.g. `wav/03a01Fa.wav`.
Emotion letters are German initials; the class order is fixed:

    0 anger (W, Wut), 1 boredom (L, Langeweile), 2 disgust (E, Ekel), 3 fear (A, Angst),
    4 happiness (F, Freude), 5 sadness (T, Trauer), 6 neutral (N)

The full corpus has 535 utterances from 10 speakers (W 127, L 81, N 79, F 71, A 69,
T 62, E 46). The synthetic corpus (`msjax.data.synthetic`) uses the same layout and
labels and is read by `read_tree`.
"""

from __future__ import annotations

import re
from pathlib import Path

from msjax.data.layout import (
    audio_duration,
    check_counts,
    layout_error,
    require_dirs,
    visible_files,
)
from msjax.data.records import Dataset, Utterance, sort_key
from msjax.errors import LabelError

EMOTIONS: dict[str, str] = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}
LABELS: tuple[str, ...] = tuple(EMOTIONS.values())
EXPECTED_TOTAL = 535
EXPECTED_SPEAKERS = 10
EXPECTED_CLASSES: dict[str, int] = {
    "anger": 127,
    "boredom": 81,
    "disgust": 46,
    "fear": 69,
    "happiness": 71,
    "sadness": 62,
    "neutral": 79,
}
TREE = """\
<root>/
  wav/
    03a01Fa.wav      <speaker:2 digits><text:letter+2 digits><emotion:1 of WLEAFTN><version:1>.wav
    03a01Nc.wav
    ...
"""

_NAME = re.compile(r"(?P<speaker>\d\d)(?P<text>[a-z]\d\d)(?P<emotion>[A-Za-z])(?P<version>[a-z])")


def parse_name(path: Path) -> tuple[str, str]:
    """Speaker and canonical label of an EMODB file name.

    Raises:
        LabelError: the name does not follow the convention or has an unknown emotion letter.
    """
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise LabelError(
            f"{path}: file name does not match <speaker:2><text:3><emotion:1><version:1>.wav"
        )
    letter = match["emotion"]
    if letter not in EMOTIONS:
        raise LabelError(
            f"{path}: unknown emotion code {letter!r} (expected one of {''.join(EMOTIONS)})"
        )
    return match["speaker"], EMOTIONS[letter]


def read_tree(root: Path, name: str) -> Dataset:
    """Reads every `wav/*.wav` of an EMODB-layout tree (no count check).

    Raises:
        LayoutError: `root/wav` is missing or holds no wav files.
        LabelError: a file name that cannot be parsed.
    """
    root = Path(root)
    require_dirs(root, ["wav"], TREE, markers=["wav"])
    files = visible_files(root / "wav", ".wav")
    if not files:
        raise layout_error(root, "no .wav files in wav/", TREE)
    utterances = []
    for path in files:
        speaker, label = parse_name(path)
        utterances.append(Utterance(path.stem, path, speaker, label, audio_duration(path)))
    return Dataset(name, LABELS, tuple(sorted(utterances, key=sort_key)))


def load(root: Path, *, allow_count_mismatch: bool = False) -> Dataset:
    """Loads EMODB from `root` and checks the published counts.

    Args:
        root: Directory holding `wav/`.
        allow_count_mismatch: Only warn when counts differ from the published 535
            utterances / 10 speakers / per-class counts, instead of raising.

    Returns:
        The dataset, labels in the order of `LABELS`.

    Raises:
        LayoutError: wrong layout. LabelError: unparseable file name.
        DataError: counts differ and `allow_count_mismatch` is False.
    """
    dataset = read_tree(root, "emodb")
    check_counts(
        dataset,
        Path(root),
        EXPECTED_TOTAL,
        EXPECTED_CLASSES,
        EXPECTED_SPEAKERS,
        allow_count_mismatch=allow_count_mismatch,
    )
    return dataset

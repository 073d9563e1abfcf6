"""EMOVO (Italian emotional speech) loader.

Layout: `<speaker>/<emotion>-<speaker>-<text>.wav` for speakers f1 f2 f3 m1 m2 m3, e.g.
`f1/dis-f1-b1.wav`. Emotion codes are Italian; the class order is fixed (EMODB's order
for the shared emotions, surprise last):

    0 anger (rab, rabbia), 1 disgust (dis), 2 fear (pau, paura),
    3 happiness (gio, gioia: the paper's "joy"), 4 sadness (tri, tristezza),
    5 neutral (neu), 6 surprise (sor, sorpresa)

The corpus has 588 utterances: 6 speakers x 7 emotions x 14 sentences (84 per class).
Files are 48 kHz stereo; `msjax.features.audio.load_audio` mixes down and resamples.
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
    "rab": "anger",
    "dis": "disgust",
    "pau": "fear",
    "gio": "happiness",
    "tri": "sadness",
    "neu": "neutral",
    "sor": "surprise",
}
LABELS: tuple[str, ...] = tuple(EMOTIONS.values())
SPEAKERS: tuple[str, ...] = ("f1", "f2", "f3", "m1", "m2", "m3")
EXPECTED_TOTAL = 588
EXPECTED_CLASSES: dict[str, int] = {label: 84 for label in LABELS}
TREE = """\
<root>/
  f1/
    dis-f1-b1.wav    <emotion: dis|gio|neu|pau|rab|sor|tri>-<speaker>-<text>.wav
    ...
  f2/  f3/  m1/  m2/  m3/
"""

_NAME = re.compile(r"(?P<emotion>[a-z]+)-(?P<speaker>[fm]\d)-(?P<text>[a-z]+\d+)")


def parse_name(path: Path, speaker_dir: str) -> str:
    """Canonical label of an EMOVO file, checking that its speaker matches its folder.

    Raises:
        LabelError: the name does not follow the convention, names another speaker,
            or has an unknown emotion code.
    """
    match = _NAME.fullmatch(path.stem.lower())
    if match is None:
        raise LabelError(f"{path}: file name does not match <emotion>-<speaker>-<text>.wav")
    if match["speaker"] != speaker_dir:
        raise LabelError(f"{path}: speaker {match['speaker']!r} in a folder of {speaker_dir!r}")
    code = match["emotion"]
    if code not in EMOTIONS:
        raise LabelError(
            f"{path}: unknown emotion code {code!r} (expected one of {', '.join(sorted(EMOTIONS))})"
        )
    return EMOTIONS[code]


def load(root: Path, *, allow_count_mismatch: bool = False) -> Dataset:
    """Loads EMOVO from `root` and checks the published counts.

    Args:
        root: Directory holding the six speaker folders.
        allow_count_mismatch: Only warn when counts differ from the published 588
            utterances / 84 per class, instead of raising.

    Returns:
        The dataset, labels in the order of `LABELS`; uids are file stems.

    Raises:
        LayoutError: a missing speaker folder or one without wav files.
        LabelError: unparseable file name. DataError: counts differ (see above).
    """
    root = Path(root)
    require_dirs(root, SPEAKERS, TREE, markers=SPEAKERS[:1])
    utterances = []
    for speaker in SPEAKERS:
        files = visible_files(root / speaker, ".wav")
        if not files:
            raise layout_error(root, f"no .wav files in {speaker}/", TREE)
        for path in files:
            label = parse_name(path, speaker)
            utterances.append(Utterance(path.stem, path, speaker, label, audio_duration(path)))
    dataset = Dataset("emovo", LABELS, tuple(sorted(utterances, key=sort_key)))
    check_counts(
        dataset,
        root,
        EXPECTED_TOTAL,
        EXPECTED_CLASSES,
        len(SPEAKERS),
        allow_count_mismatch=allow_count_mismatch,
    )
    return dataset

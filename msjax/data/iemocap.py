"""IEMOCAP loader (four-class setup: anger, happiness + excited, sadness, neutral).

Layout (as in IEMOCAP_full_release):

    SessionK/sentences/wav/<dialog>/<utterance>.wav
    SessionK/dialog/EmoEvaluation/<dialog>.txt

Each evaluation file has one summary line per utterance, starting with `[`:
`[start - end]<TAB>utterance id<TAB>label<TAB>[V, A, D]`; other lines (per-annotator
votes) are skipped. Kept labels and the fixed class order (EMODB's names and order):

    0 anger (ang), 1 happiness (hap and exc, merged), 2 sadness (sad), 3 neutral (neu)

The speaker is the session number plus the letter right before the utterance number
(`Ses01F_impro01_M012` is spoken by "1M"), not the dialog prefix, which names the
speaker who wore the motion-capture markers. The published four-class count is 5531
(ang 1103, sad 1084, hap + exc 1636, neu 1708) from 10 speakers.
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

LABELS: tuple[str, ...] = ("anger", "happiness", "sadness", "neutral")
KEPT: dict[str, str] = {
    "ang": "anger",
    "hap": "happiness",
    "exc": "happiness",
    "sad": "sadness",
    "neu": "neutral",
}
# Every category IEMOCAP's evaluators used; the ones not in KEPT are skipped.
KNOWN_CODES = frozenset(KEPT) | {"fru", "sur", "fea", "dis", "oth", "xxx"}
SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)
EXPECTED_TOTAL = 5531
EXPECTED_SPEAKERS = 10
EXPECTED_CLASSES: dict[str, int] = {
    "anger": 1103,
    "happiness": 1636,
    "sadness": 1084,
    "neutral": 1708,
}
TREE = """\
<root>/
  Session1/
    dialog/EmoEvaluation/
      Ses01F_impro01.txt        lines "[start - end]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[V, A, D]"
      ...
    sentences/wav/
      Ses01F_impro01/
        Ses01F_impro01_F000.wav
        ...
  Session2/ ... Session5/       (same structure)
"""

_LINE = re.compile(r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(?P<uid>\S+)\s+(?P<code>\S+)\s+\[[^\]]*\]\s*")
_UID = re.compile(r"Ses(?P<session>\d\d)[FM]_\S+_(?P<letter>[FM])\d{3}")


def parse_uid(uid: str, where: str) -> tuple[str, str]:
    """Session ("1".."5") and speaker ("1M") of an utterance id.

    Args:
        uid: e.g. "Ses01F_impro01_M012".
        where: "file:line", named in the error.

    Raises:
        LabelError: the id does not look like an IEMOCAP utterance id.
    """
    match = _UID.fullmatch(uid)
    if match is None:
        raise LabelError(
            f"{where}: cannot parse utterance id {uid!r} (expected SesNN[FM]_..._[FM]NNN)"
        )
    session = str(int(match["session"]))
    return session, session + match["letter"]


def _read_evaluation(txt: Path, session: int) -> list[tuple[str, str, str]]:
    """(uid, canonical label, "file:line") for the kept utterances of one evaluation file."""
    rows = []
    with open(txt, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.startswith("["):
                continue
            where = f"{txt}:{lineno}"
            match = _LINE.fullmatch(line.rstrip("\r\n"))
            if match is None:
                raise LabelError(f"{where}: cannot parse label line {line.strip()!r}")
            code = match["code"]
            if code not in KNOWN_CODES:
                raise LabelError(f"{where}: unknown emotion code {code!r}")
            uid_session, _ = parse_uid(match["uid"], where)
            if int(uid_session) != session:
                raise LabelError(f"{where}: utterance {match['uid']} is not from Session{session}")
            if code in KEPT:
                rows.append((match["uid"], KEPT[code], where))
    return rows


def load(root: Path, *, allow_count_mismatch: bool = False) -> Dataset:
    """Loads the four-class IEMOCAP set from `root` and checks the published counts.

    Args:
        root: Directory holding Session1 .. Session5.
        allow_count_mismatch: Only warn when counts differ from the published 5531
            utterances / 10 speakers / per-class counts, instead of raising.

    Returns:
        The dataset, labels in the order of `LABELS`; uids are IEMOCAP utterance ids,
        `session` is "1".."5".

    Raises:
        LayoutError: a missing session folder or one without evaluation files.
        LabelError: an unparseable label line, an unknown code, a repeated utterance,
            or a label line whose wav file does not exist (both are named).
        DataError: counts differ and `allow_count_mismatch` is False.
    """
    root = Path(root)
    required = []
    for k in SESSIONS:
        required += [f"Session{k}/sentences/wav", f"Session{k}/dialog/EmoEvaluation"]
    require_dirs(root, required, TREE, markers=["Session1"])
    utterances = []
    first_seen: dict[str, str] = {}
    for k in SESSIONS:
        evaluations = visible_files(root / f"Session{k}/dialog/EmoEvaluation", ".txt")
        if not evaluations:
            raise layout_error(root, f"no .txt files in Session{k}/dialog/EmoEvaluation/", TREE)
        for txt in evaluations:
            for uid, label, where in _read_evaluation(txt, k):
                if uid in first_seen:
                    raise LabelError(
                        f"{where}: utterance {uid} already labelled at {first_seen[uid]}"
                    )
                first_seen[uid] = where
                wav = root / f"Session{k}/sentences/wav" / txt.stem / f"{uid}.wav"
                if not wav.is_file():
                    raise LabelError(
                        f"{where}: label for {uid} but its audio file {wav} does not exist"
                    )
                session, speaker = parse_uid(uid, where)
                utterances.append(Utterance(uid, wav, speaker, label, audio_duration(wav), session))
    dataset = Dataset("iemocap", LABELS, tuple(sorted(utterances, key=sort_key)))
    check_counts(
        dataset,
        root,
        EXPECTED_TOTAL,
        EXPECTED_CLASSES,
        EXPECTED_SPEAKERS,
        allow_count_mismatch=allow_count_mismatch,
    )
    return dataset

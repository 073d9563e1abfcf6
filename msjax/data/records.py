"""Dataset records: one `Utterance` per audio file and a `Dataset` that holds them.

Labels are canonical English names in a fixed order per dataset; a label's index in
`Dataset.labels` is the class id that models, checkpoints and metrics use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from msjax.errors import DataError, LabelError


@dataclass(frozen=True)
class Utterance:
    """One labelled audio file.

    Attributes:
        uid: Identifier unique within its dataset (the file stem, or IEMOCAP's utterance id).
        path: The audio file.
        speaker: Speaker id, e.g. "03" (EMODB), "f1" (EMOVO), "1M" (IEMOCAP).
        label: Canonical English emotion name, one of `Dataset.labels`.
        duration: Length in seconds, read from the file header.
        session: Recording session ("1".."5" for IEMOCAP) or a manifest's group, None
            where there is none.
        split: "train", "val" or "test" where the corpus has its own split (manifests),
            else None.
    """

    uid: str
    path: Path
    speaker: str
    label: str
    duration: float
    session: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A loaded corpus: its name, label order and utterances (sorted by speaker, then uid)."""

    name: str
    labels: tuple[str, ...]
    utterances: tuple[Utterance, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for utt in self.utterances:
            if utt.uid in seen:
                raise DataError(f"{utt.path}: utterance id {utt.uid!r} occurs twice in {self.name}")
            seen.add(utt.uid)
            if utt.label not in self.labels:
                raise LabelError(f"{utt.path}: label {utt.label!r} is not one of {self.labels}")

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def speakers(self) -> tuple[str, ...]:
        """Sorted speaker ids."""
        return tuple(sorted({u.speaker for u in self.utterances}))

    @property
    def sessions(self) -> tuple[str, ...]:
        """Sorted session ids; empty when the corpus has no sessions."""
        return tuple(sorted({u.session for u in self.utterances if u.session is not None}))

    def by_uid(self) -> dict[str, Utterance]:
        """Maps every uid to its utterance."""
        return {u.uid: u for u in self.utterances}

    def select(self, uids: Iterable[str]) -> tuple[Utterance, ...]:
        """The utterances with the given uids, in the given order.

        Raises:
            DataError: a uid that is not in this dataset.
        """
        index = self.by_uid()
        missing = [uid for uid in uids if uid not in index]
        if missing:
            raise DataError(
                f"{self.name}: unknown utterance ids {missing[:5]} ({len(missing)} in all)"
            )
        return tuple(index[uid] for uid in uids)

    def class_counts(self, utterances: Iterable[Utterance] | None = None) -> dict[str, int]:
        """Utterances per label, in label order (zeros included)."""
        counts = Counter(u.label for u in (self.utterances if utterances is None else utterances))
        return {label: counts.get(label, 0) for label in self.labels}

    def speaker_counts(self, utterances: Iterable[Utterance] | None = None) -> dict[str, int]:
        """Utterances per speaker, sorted by speaker."""
        counts = Counter(u.speaker for u in (self.utterances if utterances is None else utterances))
        return dict(sorted(counts.items()))


def label_index(dataset: Dataset, label: str) -> int:
    """The class id of `label` in `dataset`.

    Raises:
        LabelError: `label` is not one of the dataset's labels.
    """
    try:
        return dataset.labels.index(label)
    except ValueError:
        raise LabelError(
            f"{dataset.name}: unknown label {label!r}; labels are {', '.join(dataset.labels)}"
        ) from None


def label_ids(dataset: Dataset, utterances: Iterable[Utterance] | None = None) -> list[int]:
    """Class ids of `utterances` (default: all of the dataset's), in order."""
    index = {label: i for i, label in enumerate(dataset.labels)}
    return [index[u.label] for u in (dataset.utterances if utterances is None else utterances)]


def sort_key(utt: Utterance) -> tuple[str, str]:
    """The order loaders return utterances in: by speaker, then uid."""
    return (utt.speaker, utt.uid)

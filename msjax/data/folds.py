"""Cross-validation folds: train / validation / test membership per fold.

Protocols:
    "loso": leave one speaker out; one fold per speaker (IEMOCAP 10, EMODB 10, EMOVO 6).
    "session": leave one session out (IEMOCAP, 5 folds); both speakers of a session are tested.
    "group": leave one group out: one fold per `session` value, for any grouping a manifest
        gives (recording days, rooms, speaker sets); splits never share a group.
    "stratified": seeded label-stratified k-fold over utterances (EMOVO in the paper, 10 folds);
        speakers are shared between splits by design.
    "split": the corpus' own train/val/test split (one fold, no cross-validation); without
        val rows, validation is held out of train as for "stratified".

Validation (always carved out of the training side, never from the test fold):
    "heldout" (default):
        - speaker protocols hold out one whole speaker that is not tested. For "loso" on a
          corpus with two-speaker sessions (IEMOCAP) that is the test speaker's session
          partner, so no dialog of the tested session is trained on; otherwise the
          speakers are put in a seeded cyclic order and each test speaker is validated
          by the next one (every speaker validates exactly one fold).
        - "stratified" holds out a seeded, label-stratified 10% of the training utterances.
    "test": the validation set IS the test fold. This reproduces CA-MSER / the paper, which
        pick the best epoch on the test fold; it inflates reported accuracy by several points
        and is offered only to compare with published numbers.

Every fold is checked by `check_fold`: splits disjoint (by uid, and by speaker for speaker
protocols) and together covering the dataset; a violation raises DataError.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from msjax.data.records import Dataset, Utterance, label_ids
from msjax.errors import DataError, UsageError

PROTOCOLS: tuple[str, ...] = ("loso", "session", "group", "stratified", "split")
VALIDATIONS: tuple[str, ...] = ("heldout", "test")
DEFAULT_STRATIFIED_FOLDS = 10
HELDOUT_FRACTION = 0.1
SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASS_WEIGHTS: tuple[str, ...] = ("", "balanced")


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold; splits are tuples of uids in dataset order.

    Attributes:
        index: Fold number, from 0.
        train, val, test: Utterance ids of each split.
        test_speakers, val_speakers, train_speakers: Sorted speakers present in each split
            (for "stratified" they overlap by design).
        protocol: One of `PROTOCOLS`.
        validation: "heldout" or "test" (val == test, paper-compatible, inflated).
        class_counts: {split: {label: count}} in label order, for reports and folds.json.
    """

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    test_speakers: tuple[str, ...]
    val_speakers: tuple[str, ...]
    train_speakers: tuple[str, ...] = ()
    protocol: str = "loso"
    validation: str = "heldout"
    class_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict, hash=False)

    def split(self, name: str) -> tuple[str, ...]:
        """The uids of split `name` ("train", "val" or "test")."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def speakers(self, name: str) -> tuple[str, ...]:
        """The speakers of split `name`."""
        return {"train": self.train_speakers, "val": self.val_speakers, "test": self.test_speakers}[
            name
        ]


def make_folds(
    dataset: Dataset,
    protocol: str = "loso",
    num_folds: int | None = None,
    seed: int = 0,
    validation: str = "heldout",
) -> list[Fold]:
    """Builds and checks the folds of `dataset`.

    Args:
        dataset: A loaded corpus.
        protocol: One of `PROTOCOLS` (see the module docstring).
        num_folds: None for the protocol's natural count (speakers, sessions, groups, 10,
            or 1 for "split"); only "stratified" accepts another count.
        seed: Seeds the stratified split and the validation choice.
        validation: "heldout" (default) or "test"; "test" selects on the test fold itself,
            as CA-MSER and the paper do, which inflates results.

    Returns:
        The folds, in order.

    Raises:
        UsageError: unknown protocol/validation, or an impossible fold count.
        DataError: utterances without the speaker, group or split the protocol needs;
            fewer than 2 speakers (groups) to leave out; a class too small for the folds
            asked; a fold that fails the disjointness check
            (a bug, never expected).
    """
    if protocol not in PROTOCOLS:
        raise UsageError(
            f"unknown fold protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}"
        )
    if validation not in VALIDATIONS:
        raise UsageError(
            f"unknown validation {validation!r}; choose one of {', '.join(VALIDATIONS)}"
        )
    _require_field(dataset, protocol)
    if protocol == "stratified":
        splits = _stratified_splits(dataset, num_folds, seed, validation)
    elif protocol == "split":
        splits = [_official_split(dataset, num_folds, seed, validation)]
    else:
        splits = _speaker_splits(dataset, protocol, num_folds, seed, validation)
    folds = [
        _make_fold(dataset, i, tr, va, te, protocol, validation)
        for i, (tr, va, te) in enumerate(splits)
    ]
    for fold in folds:
        check_fold(fold, dataset)
    return folds


def _require_field(dataset: Dataset, protocol: str) -> None:
    """Raises DataError when utterances lack the speaker, group or split `protocol` uses."""
    needs = {
        "loso": ("a speaker", lambda u: bool(u.speaker)),
        "group": ("a session", lambda u: bool(u.session)),
        "split": ("a split (train, val or test)", lambda u: u.split in SPLITS),
    }
    if protocol not in needs:
        return
    what, present = needs[protocol]
    lacking = [u for u in dataset.utterances if not present(u)]
    if lacking:
        raise DataError(
            f"{dataset.name}: protocol {protocol!r} needs {what} for every utterance; "
            f"{len(lacking)} of {len(dataset)} have none (first: {lacking[0].path})"
        )


def _unit(protocol: str) -> Callable[[Utterance], str]:
    """What a speaker protocol keeps apart: the group for "group", else the speaker."""
    if protocol == "group":
        return lambda u: u.session
    return lambda u: u.speaker


def _speaker_groups(dataset: Dataset, protocol: str, num_folds: int | None) -> list[set[str]]:
    """The speakers (groups, for "group") tested by each fold of a speaker protocol."""
    if protocol == "loso":
        groups = [{s} for s in dataset.speakers]
        unit = "speakers"
    elif protocol == "group":
        groups = [{s} for s in dataset.sessions]
        unit = "groups"
    else:
        if not dataset.sessions:
            raise UsageError(
                f"protocol 'session' needs a corpus with sessions; {dataset.name} has none"
            )
        groups = [
            {u.speaker for u in dataset.utterances if u.session == s} for s in dataset.sessions
        ]
        unit = "sessions"
    if num_folds is not None and num_folds != len(groups):
        raise UsageError(
            f"protocol {protocol!r} on {dataset.name} gives {len(groups)} folds "
            f"(one per {unit[:-1]}), not {num_folds}"
        )
    if len(groups) < 2:  # the data's doing, as a class too small for the folds is
        raise DataError(
            f"protocol {protocol!r} needs at least 2 {unit}; {dataset.name} has {len(groups)}"
        )
    return groups


def _validation_speaker(dataset: Dataset, protocol: str, group: set[str], order: list[str]) -> str:
    """The held-out validation speaker (group) for a fold that tests `group`."""
    if protocol == "loso" and dataset.sessions:
        (speaker,) = group
        session = {u.session for u in dataset.utterances if u.speaker == speaker}
        partners = sorted({u.speaker for u in dataset.utterances if u.session in session} - group)
        if len(partners) == 1:
            return partners[0]
    start = max(order.index(s) for s in group)
    following = (order[(start + step) % len(order)] for step in range(1, len(order)))
    return next(s for s in following if s not in group)


def _speaker_splits(
    dataset: Dataset, protocol: str, num_folds: int | None, seed: int, validation: str
) -> list[tuple[list[str], list[str], list[str]]]:
    groups = _speaker_groups(dataset, protocol, num_folds)
    key = _unit(protocol)
    units = dataset.sessions if protocol == "group" else dataset.speakers
    noun = "groups" if protocol == "group" else "speakers"
    if validation == "heldout" and any(len(units) - len(g) < 2 for g in groups):
        raise UsageError(
            f"{dataset.name}: held-out validation needs 2 {noun} outside every test fold "
            f"(one to validate, one to train); it has {len(units)} {noun}"
        )
    order = [str(s) for s in np.random.default_rng(seed).permutation(list(units))]
    splits = []
    for group in groups:
        test = [u.uid for u in dataset.utterances if key(u) in group]
        if validation == "heldout":
            val_unit = _validation_speaker(dataset, protocol, group, order)
            val = [u.uid for u in dataset.utterances if key(u) == val_unit]
        else:
            val_unit, val = None, list(test)
        train = [u.uid for u in dataset.utterances if key(u) not in group and key(u) != val_unit]
        splits.append((train, val, test))
    return splits


def _stratified_splits(
    dataset: Dataset, num_folds: int | None, seed: int, validation: str
) -> list[tuple[list[str], list[str], list[str]]]:
    k = DEFAULT_STRATIFIED_FOLDS if num_folds is None else num_folds
    y = np.asarray(label_ids(dataset))
    counts = np.bincount(y, minlength=len(dataset.labels))
    present = [i for i, n in enumerate(counts) if n > 0]
    smallest = min(present, key=lambda i: counts[i]) if present else None
    if k < 2:
        raise UsageError(f"stratified {k}-fold on {dataset.name}: needs at least 2 folds")
    if smallest is None or counts[smallest] < k:
        have = f"{dataset.labels[smallest]} has {counts[smallest]}" if present else "it is empty"
        raise DataError(
            f"stratified {k}-fold on {dataset.name} needs every class to have >= {k} utterances "
            f"(smallest: {have})"
        )
    uids = np.asarray([u.uid for u in dataset.utterances])
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = []
    for i, (train_idx, test_idx) in enumerate(splitter.split(uids, y)):
        val_idx = test_idx
        if validation == "heldout":
            where = f"stratified {k}-fold on {dataset.name}: fold {i}'s"
            train_idx, val_idx = _heldout(train_idx, y, [seed, i], where)
        splits.append(tuple(list(uids[np.sort(idx)]) for idx in (train_idx, val_idx, test_idx)))
    return splits


def _heldout(
    train_idx: np.ndarray, y: np.ndarray, seed: list[int], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Splits a label-stratified validation slice (10%, >= 1 per class) off `train_idx`."""
    present = np.bincount(y[train_idx])
    present = present[present > 0]
    if present.min() < 2:
        raise DataError(
            f"{where} training side has a class with one utterance, too few to hold out a "
            "validation set"
        )
    size = max(int(np.ceil(HELDOUT_FRACTION * len(train_idx))), len(present))
    # A seed per fold keeps each fold's validation slice independent.
    return train_test_split(
        train_idx,
        test_size=size,
        stratify=y[train_idx],
        random_state=int(np.random.default_rng(seed).integers(2**31)),
    )


def _official_split(
    dataset: Dataset, num_folds: int | None, seed: int, validation: str
) -> tuple[list[str], list[str], list[str]]:
    """The corpus' own split; under validation="test" its val rows join the training side."""
    if num_folds not in (None, 1):
        raise UsageError(
            f"protocol 'split' on {dataset.name} gives 1 fold (its own split), not {num_folds}"
        )
    index = {name: [i for i, u in enumerate(dataset.utterances) if u.split == name]
             for name in SPLITS}
    if not index["train"] or not index["test"]:
        counts = ", ".join(f"{name} {len(rows)}" for name, rows in index.items())
        raise DataError(f"{dataset.name}: protocol 'split' needs train and test rows ({counts})")
    train, val, test = (np.asarray(index[name], dtype=int) for name in SPLITS)
    if validation == "test":
        train, val = np.sort(np.concatenate([train, val])), test
    elif not len(val):
        y = np.asarray(label_ids(dataset))
        train, val = _heldout(train, y, [seed, 0], f"{dataset.name} split:")
    uids = np.asarray([u.uid for u in dataset.utterances])
    return tuple(list(uids[np.sort(idx)]) for idx in (train, val, test))


def _make_fold(
    dataset: Dataset,
    index: int,
    train: Sequence[str],
    val: Sequence[str],
    test: Sequence[str],
    protocol: str,
    validation: str,
) -> Fold:
    members = {
        "train": dataset.select(train),
        "val": dataset.select(val),
        "test": dataset.select(test),
    }
    speakers = {name: tuple(sorted({u.speaker for u in utts})) for name, utts in members.items()}
    return Fold(
        index=index,
        train=tuple(train),
        val=tuple(val),
        test=tuple(test),
        test_speakers=speakers["test"],
        val_speakers=speakers["val"],
        train_speakers=speakers["train"],
        protocol=protocol,
        validation=validation,
        class_counts={name: dataset.class_counts(utts) for name, utts in members.items()},
    )


def class_weights(fold: Fold, mode: str) -> np.ndarray | None:
    """Loss weights per class [C] for `mode`: None for "" (unweighted, the paper's);
    "balanced": n / (k * n_c) over the training split's n utterances of k present
    classes (inverse frequency, mean 1 per utterance), 0 for a class it lacks.

    Raises:
        UsageError: an unknown mode.
    """
    if mode not in CLASS_WEIGHTS:
        raise UsageError(
            f"--config.optim.class_weights={mode!r}: choose balanced or leave it empty"
        )
    if not mode:
        return None
    counts = np.asarray(list(fold.class_counts["train"].values()), dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def check_fold(fold: Fold, dataset: Dataset) -> None:
    """Checks that a fold's splits are non-empty, disjoint and cover the dataset.

    Splits must not share utterances (except val == test under validation="test"); under
    the speaker protocols they must not share speakers (groups, for "group") either.

    Raises:
        DataError: naming the fold, the splits and the shared utterances or speakers.
    """
    where = f"{dataset.name} fold {fold.index}"
    utts = dataset.by_uid()
    pairs = [("train", "test"), ("train", "val")]
    if fold.validation == "test":
        if fold.val != fold.test:
            raise DataError(f"{where}: validation='test' but val differs from test")
    else:
        pairs.append(("val", "test"))
    for name in SPLITS:
        if not fold.split(name):
            raise DataError(f"{where}: the {name} split is empty")
        unknown = set(fold.split(name)) - utts.keys()
        if unknown:
            raise DataError(f"{where}: {name} holds unknown utterances {sorted(unknown)[:5]}")
    for a, b in pairs:
        shared = set(fold.split(a)) & set(fold.split(b))
        if shared:
            raise DataError(f"{where}: {a} and {b} share utterances {sorted(shared)[:5]}")
        if fold.protocol in ("loso", "session", "group"):
            key = _unit(fold.protocol)
            shared = {key(utts[u]) for u in fold.split(a)} & {key(utts[u]) for u in fold.split(b)}
            if shared:
                noun = "groups" if fold.protocol == "group" else "speakers"
                raise DataError(f"{where}: {a} and {b} share {noun} {sorted(shared)}")
    covered = set(fold.train) | set(fold.val) | set(fold.test)
    if len(covered) != len(dataset):
        raise DataError(f"{where}: splits cover {len(covered)} of {len(dataset)} utterances")


def folds_to_dict(folds: Sequence[Fold]) -> dict:
    """A JSON-ready description of `folds` (the run's folds.json)."""
    return {
        "protocol": folds[0].protocol if folds else None,
        "validation": folds[0].validation if folds else None,
        "num_folds": len(folds),
        "folds": [
            {
                "index": fold.index,
                **{
                    name: {
                        "speakers": list(fold.speakers(name)),
                        "class_counts": dict(fold.class_counts.get(name, {})),
                        "uids": list(fold.split(name)),
                    }
                    for name in SPLITS
                },
            }
            for fold in folds
        ],
    }


def read_folds_json(path: Path) -> list[Fold]:
    """Reads a folds.json (`folds_to_dict` as JSON), e.g. to resume a run on the same splits.

    Raises:
        DataError: the file is missing or not a folds file.
    """
    try:
        data = json.loads(Path(path).read_text())
        return [
            Fold(
                index=f["index"],
                train=tuple(f["train"]["uids"]),
                val=tuple(f["val"]["uids"]),
                test=tuple(f["test"]["uids"]),
                test_speakers=tuple(f["test"]["speakers"]),
                val_speakers=tuple(f["val"]["speakers"]),
                train_speakers=tuple(f["train"]["speakers"]),
                protocol=data["protocol"],
                validation=data["validation"],
                class_counts={name: f[name]["class_counts"] for name in SPLITS},
            )
            for f in data["folds"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a readable folds file ({err})") from None


def summarize_folds(folds: Sequence[Fold]) -> str:
    """A human-readable table of speakers and class counts per split, for `--dry_run`."""
    if not folds:
        return "no folds"
    labels = list(next(iter(folds[0].class_counts.values()), {}))
    lines = [f"{len(folds)} folds, protocol {folds[0].protocol}, validation {folds[0].validation}"]
    if folds[0].validation == "test":
        lines.append("(validation on the test fold: selection is optimistic, as in the paper)")
    widths = [max(len(lb), 5) for lb in labels]
    header = " ".join(f"{lb:>{w}}" for lb, w in zip(labels, widths, strict=True))
    lines.append(f"{'fold':>4} {'split':<5} {'utts':>5}  {header}  speakers")
    for fold in folds:
        for name in SPLITS:
            counts = fold.class_counts.get(name, {})
            cells = " ".join(
                f"{counts.get(lb, 0):>{w}}" for lb, w in zip(labels, widths, strict=True)
            )
            spk = " ".join(fold.speakers(name))
            lines.append(f"{fold.index:>4} {name:<5} {len(fold.split(name)):>5}  {cells}  {spk}")
    return "\n".join(lines)

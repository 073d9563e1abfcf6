"""Cross-validation folds: counts, disjointness, validation policies, seeding, folds.json."""

import dataclasses
import json
from pathlib import Path

import pytest

from msjax.data.folds import (
    check_fold,
    folds_to_dict,
    make_folds,
    read_folds_json,
    summarize_folds,
)
from msjax.data.records import Dataset, Utterance
from msjax.errors import DataError, UsageError
from msjax.io.files import write_json

EMODB_LABELS = ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral")


def fake_dataset(speakers, labels, per_class=3, sessions=None) -> Dataset:
    """A Dataset without files: `per_class` utterances per speaker and label."""
    utts = [
        Utterance(
            f"{spk}_{label}_{i}",
            Path(f"{spk}_{label}_{i}.wav"),
            spk,
            label,
            1.0,
            None if sessions is None else sessions[spk],
        )
        for spk in speakers
        for label in labels
        for i in range(per_class)
    ]
    return Dataset("fake", tuple(labels), tuple(utts))


@pytest.fixture(scope="module")
def emodb_like():
    return fake_dataset(["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"], EMODB_LABELS)


@pytest.fixture(scope="module")
def iemocap_like():
    speakers = [f"{k}{g}" for k in range(1, 6) for g in "FM"]
    return fake_dataset(
        speakers, ("anger", "happiness", "sadness", "neutral"), sessions={s: s[0] for s in speakers}
    )


def speakers_of(ds, uids):
    index = ds.by_uid()
    return {index[u].speaker for u in uids}


def test_loso_emodb_like(emodb_like):
    folds = make_folds(emodb_like, "loso", seed=0)
    assert len(folds) == 10
    assert [f.test_speakers for f in folds] == [(s,) for s in emodb_like.speakers]
    for fold in folds:
        train, val, test = (
            speakers_of(emodb_like, fold.split(n)) for n in ("train", "val", "test")
        )
        assert len(val) == 1 and not (train & val) and not (train & test) and not (val & test)
        assert len(train) == 8
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(emodb_like)
        assert fold.class_counts["test"] == {label: 3 for label in EMODB_LABELS}
    # Cyclic order: every speaker validates exactly one fold.
    assert sorted(s for f in folds for s in f.val_speakers) == list(emodb_like.speakers)


def test_loso_validation_speaker_depends_on_seed(emodb_like):
    a = [f.val_speakers for f in make_folds(emodb_like, "loso", seed=0)]
    assert a == [f.val_speakers for f in make_folds(emodb_like, "loso", seed=0)]
    assert a != [f.val_speakers for f in make_folds(emodb_like, "loso", seed=1)]


def test_loso_emovo_like_has_six_folds():
    ds = fake_dataset(["f1", "f2", "f3", "m1", "m2", "m3"], EMODB_LABELS, per_class=2)
    folds = make_folds(ds, "loso", num_folds=6)
    assert len(folds) == 6 and all(len(f.train_speakers) == 4 for f in folds)


def test_loso_iemocap_validates_on_session_partner(iemocap_like):
    folds = make_folds(iemocap_like, "loso", seed=3)
    assert len(folds) == 10
    for fold in folds:
        (test,) = fold.test_speakers
        partner = test[0] + ("M" if test[1] == "F" else "F")
        assert fold.val_speakers == (partner,)
        assert all(s[0] != test[0] for s in fold.train_speakers)


def test_session_protocol(iemocap_like):
    folds = make_folds(iemocap_like, "session")
    assert len(folds) == 5
    for k, fold in enumerate(folds, start=1):
        assert fold.test_speakers == (f"{k}F", f"{k}M")
        assert len(fold.val_speakers) == 1 and fold.val_speakers[0][0] != str(k)
        assert len(fold.train_speakers) == 7


def test_stratified_folds(emodb_like):
    folds = make_folds(emodb_like, "stratified", seed=7)
    assert len(folds) == 10
    tested = [u for f in folds for u in f.test]
    assert sorted(tested) == sorted(u.uid for u in emodb_like.utterances)  # a partition
    for fold in folds:
        assert not set(fold.train) & set(fold.val) and not set(fold.val) & set(fold.test)
        assert 0.08 <= len(fold.val) / (len(fold.train) + len(fold.val)) <= 0.12
        assert all(n == 3 for n in fold.class_counts["test"].values())  # 30 per class / 10
    again = make_folds(emodb_like, "stratified", seed=7)
    other = make_folds(emodb_like, "stratified", seed=8)
    assert [f.test for f in again] == [f.test for f in folds]
    assert [f.val for f in again] == [f.val for f in folds]
    assert [f.test for f in other] != [f.test for f in folds]


def test_stratified_small_corpus_validates_every_class():
    # 10% of 14 training utterances is fewer than the 7 classes: one per class instead.
    folds = make_folds(fake_dataset(["01"], EMODB_LABELS, per_class=4), "stratified", 2, seed=0)
    for fold in folds:
        assert all(n == 1 for n in fold.class_counts["val"].values())
    with pytest.raises(DataError, match="class with one utterance"):
        make_folds(fake_dataset(["01"], EMODB_LABELS, per_class=2), "stratified", 2, seed=0)


def test_one_speaker_or_group_to_leave_out_is_a_data_error():
    one_group = {"01": "a", "02": "a", "03": "a"}
    for protocol, ds, unit in (
        ("loso", fake_dataset(["01"], EMODB_LABELS), "speakers"),
        ("group", fake_dataset(["01", "02", "03"], EMODB_LABELS, sessions=one_group), "groups"),
    ):
        with pytest.raises(DataError, match=f"needs at least 2 {unit}; fake has 1"):
            make_folds(ds, protocol)


def test_heldout_needs_a_training_speaker():
    ds = fake_dataset(["01", "02"], EMODB_LABELS)
    with pytest.raises(UsageError, match="needs 2 speakers outside every test fold"):
        make_folds(ds, "loso")
    assert len(make_folds(ds, "loso", validation="test")) == 2


def test_validation_on_test_fold(emodb_like):
    for protocol in ("loso", "stratified"):
        for fold in make_folds(emodb_like, protocol, validation="test"):
            assert fold.val == fold.test and fold.val_speakers == fold.test_speakers
            assert fold.validation == "test"
            assert len(fold.train) + len(fold.test) == len(emodb_like)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(protocol="kfold"), "unknown fold protocol 'kfold'"),
        (dict(protocol="loso", validation="train"), "unknown validation 'train'"),
        (dict(protocol="loso", num_folds=5), "gives 10 folds \\(one per speaker\\), not 5"),
        (dict(protocol="session"), "needs a corpus with sessions"),
        (dict(protocol="stratified", num_folds=1), "stratified 1-fold on fake: needs at least 2"),
    ],
)
def test_bad_fold_requests(emodb_like, kwargs, match):
    with pytest.raises(UsageError, match=match):
        make_folds(emodb_like, **kwargs)


def test_classes_too_small_for_the_folds_are_data_errors(emodb_like):
    with pytest.raises(DataError, match=r"needs every class to have >= 40 .*\(smallest: anger has"):
        make_folds(emodb_like, "stratified", num_folds=40)


def test_check_fold_catches_leaks(emodb_like):
    fold = make_folds(emodb_like, "loso")[0]
    leaked = dataclasses.replace(fold, test=fold.test + fold.train[:1])
    with pytest.raises(DataError, match="fold 0: train and test share utterances"):
        check_fold(leaked, emodb_like)
    # Moving one utterance of a training speaker into test leaks that speaker.
    moved = dataclasses.replace(fold, train=fold.train[1:], test=fold.test + fold.train[:1])
    with pytest.raises(DataError, match="train and test share speakers"):
        check_fold(moved, emodb_like)
    with pytest.raises(DataError, match="splits cover 209 of 210 utterances"):
        check_fold(dataclasses.replace(fold, train=fold.train[1:]), emodb_like)
    with pytest.raises(DataError, match="val differs from test"):
        check_fold(dataclasses.replace(fold, validation="test"), emodb_like)


def test_folds_json_round_trip(tmp_path, emodb_like):
    folds = make_folds(emodb_like, "loso", seed=2)
    path = tmp_path / "run" / "folds.json"
    write_json(folds_to_dict(folds), path)
    data = json.loads(path.read_text())
    assert data["protocol"] == "loso" and data["validation"] == "heldout"
    assert data["num_folds"] == 10
    first = data["folds"][0]
    assert first["test"]["speakers"] == ["03"]
    assert first["test"]["class_counts"] == {label: 3 for label in EMODB_LABELS}
    assert first["train"]["uids"] == list(folds[0].train)
    assert read_folds_json(path) == folds
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a readable folds file"):
        read_folds_json(tmp_path / "bad.json")


def test_summary_lists_speakers_and_counts(emodb_like):
    text = summarize_folds(make_folds(emodb_like, "loso", validation="test"))
    lines = text.splitlines()
    assert lines[0] == "10 folds, protocol loso, validation test"
    assert "optimistic" in lines[1]
    assert "anger" in lines[2] and "speakers" in lines[2]
    assert lines[5].split()[:3] == ["0", "test", "21"] and lines[5].endswith(" 03")

"""The real EMODB copy beside the repository (../shared/data/emodb): counts and LOSO folds."""

from collections import Counter

import pytest

from msjax.data import load_dataset
from msjax.data.emodb import EMOTIONS
from msjax.data.folds import make_folds


@pytest.fixture(scope="module")
def dataset(emodb_dir):
    return load_dataset("emodb", emodb_dir)


def test_counts(dataset, emodb_dir):
    assert len(dataset) == 535
    assert len(list((emodb_dir / "wav").glob("*.wav"))) == 535
    assert dataset.speakers == ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
    letters = Counter(u.uid[5] for u in dataset.utterances)
    assert letters == {"W": 127, "L": 81, "N": 79, "F": 71, "A": 69, "T": 62, "E": 46}
    assert all(EMOTIONS[u.uid[5]] == u.label for u in dataset.utterances)
    assert all(u.duration == pytest.approx(2.0) for u in dataset.utterances)


def test_loso_folds(dataset):
    folds = make_folds(dataset, "loso", seed=0)
    assert len(folds) == 10
    assert sorted(s for f in folds for s in f.test_speakers) == list(dataset.speakers)
    index = dataset.by_uid()
    for fold in folds:
        train, val, test = (
            {index[u].speaker for u in fold.split(n)} for n in ("train", "val", "test")
        )
        assert len(test) == 1 and len(val) == 1 and len(train) == 8
        assert not (train & val or train & test or val & test)
        assert sorted(fold.train + fold.val + fold.test) == sorted(index)

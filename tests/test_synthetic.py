"""The synthetic corpus: layout, determinism, idempotence, and that emotion is learnable."""

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from msjax.data import emodb, load_dataset
from msjax.data.records import label_ids
from msjax.data.synthetic import MANIFEST, generate_corpus, synthesize
from msjax.errors import DataError, LayoutError, UsageError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("synthetic"), seed=0)


def test_default_corpus_layout(corpus):
    ds = load_dataset("synthetic", corpus)
    assert ds.name == "synthetic" and ds.labels == emodb.LABELS
    assert len(ds) == 6 * 7 * 4
    assert ds.speakers == ("01", "02", "03", "04", "05", "06")
    assert ds.class_counts() == {label: 24 for label in ds.labels}
    assert all(1.5 <= u.duration <= 4.0 for u in ds.utterances)
    info = sf.info(str(ds.utterances[0].path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert ds.utterances[0].path.name == "01a01Aa.wav"


def test_synthesis_is_deterministic():
    a = synthesize(0, 1, 2, "W")
    assert np.array_equal(a, synthesize(0, 1, 2, "W"))
    assert not np.array_equal(a[:8000], synthesize(1, 1, 2, "W")[:8000])
    assert a.dtype == np.float32 and np.isfinite(a).all() and 0 < np.abs(a).max() < 1


def test_same_settings_are_a_no_op_and_others_regenerate(tmp_path):
    root = generate_corpus(tmp_path, seed=3, num_speakers=1, utterances_per_emotion=2)
    wav = root / "wav" / "01a02Ta.wav"
    stamp = wav.stat().st_mtime_ns
    generate_corpus(tmp_path, seed=3, num_speakers=1, utterances_per_emotion=2)
    assert wav.stat().st_mtime_ns == stamp
    before = sf.read(wav)[0]
    generate_corpus(tmp_path, seed=4, num_speakers=1, utterances_per_emotion=1)
    assert not wav.exists()  # a file of the old settings only is removed
    assert len(list((root / "wav").glob("*.wav"))) == 7
    generate_corpus(tmp_path, seed=3, num_speakers=1, utterances_per_emotion=2)
    assert np.array_equal(sf.read(wav)[0], before)
    # A missing file makes the corpus incomplete, so it is regenerated.
    wav.unlink()
    generate_corpus(tmp_path, seed=3, num_speakers=1, utterances_per_emotion=2)
    assert wav.exists()


def test_load_checks_manifest_and_counts(tmp_path):
    with pytest.raises(LayoutError, match=f"no readable {MANIFEST}; create the corpus"):
        load_dataset("synthetic", tmp_path)
    root = generate_corpus(tmp_path, seed=0, num_speakers=1, utterances_per_emotion=1)
    (root / "wav" / "01a01Wa.wav").unlink()
    with pytest.raises(DataError, match="6 utterances, expected 7"):
        load_dataset("synthetic", root)
    assert len(load_dataset("synthetic", root, allow_count_mismatch=True)) == 6
    with pytest.raises(UsageError, match="must be in 1..99"):
        generate_corpus(tmp_path, num_speakers=0)


def test_emotion_is_learnable_across_speakers(corpus):
    """MFCC mean/std + logistic regression, trained on speakers 01-04, tested on 05-06."""
    ds = load_dataset("synthetic", corpus)
    feats = []
    for utt in ds.utterances:
        wav, sr = sf.read(utt.path, dtype="float32")
        mfcc = librosa.feature.mfcc(y=wav, sr=sr, n_mfcc=20)
        feats.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
    x, y = np.stack(feats), np.asarray(label_ids(ds))
    test = np.asarray([u.speaker in ("05", "06") for u in ds.utterances])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x[~test], y[~test])
    accuracy = float(np.mean(clf.predict(x[test]) == y[test]))
    assert accuracy > 0.5, f"accuracy {accuracy:.2f} on unseen speakers (chance 0.14)"

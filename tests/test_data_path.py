"""The data path keeps every batch row's features and label together.

A synthetic corpus where every segment of every utterance is a tone of its own
frequency: the tone can be read back from the spectrogram row (its loudest bin), the
waveform row (its FFT peak) and the SSL row (a stand-in encoder that returns the
waveform's peak frequency), and the MFCC row must equal that segment's MFCC computed
from the file directly. Utterances of 1, 2 and 3 segments (the last ones half
padded), shuffled batches with a padded tail, the cache on and off.
"""

import numpy as np
import pytest
import soundfile

from msjax.data.records import Dataset, Utterance
from msjax.features.acoustic import FeatureConfig, segment, utterance_features
from msjax.features.cache import FeatureCache
from msjax.features.image import fit_minmax, spec_to_image
from msjax.features.store import FeatureStore, iterate_batches

CFG = FeatureConfig(segment_seconds=1.0)
SR = CFG.sample_rate
LABELS = ("a", "b", "c")
DURATIONS = (1.0, 1.5, 2.5, 1.0, 2.0, 1.25, 2.75)  # seconds: 1 to 3 segments each
BIN_HZ = SR / CFG.spec_n_fft


def _tone_hz(utt: int, seg: int) -> float:
    """A distinct frequency per (utterance, segment), on a spectrogram bin."""
    return BIN_HZ * (10 + 6 * (3 * utt + seg))


def _peak_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.fft.rfftfreq(len(wav), 1 / SR)[np.argmax(spectrum)])


class _ToneEncoder:
    """Frozen-encoder stand-in: [B, N] -> [B, 2, 1] holding each row's peak frequency."""

    identity = "tone-encoder"
    extract_batch_size = 3

    def features(self, wav):
        return np.array([[[_peak_hz(w)]] * 2 for w in np.asarray(wav)], np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    utterances, truth = [], {}
    for u, seconds in enumerate(DURATIONS):
        t = np.arange(int(seconds * SR)) / SR
        seg = np.minimum((t // CFG.segment_seconds).astype(int), 2)
        hz = np.array([_tone_hz(u, k) for k in range(3)])[seg]
        wav = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        path = root / f"u{u}.wav"
        soundfile.write(path, wav, SR, subtype="FLOAT")
        uid = f"u{u}"
        utterances.append(Utterance(uid, path, f"s{u % 2}", LABELS[u % 3], seconds))
        feats = segment(wav, utterance_features(wav, CFG), CFG)
        truth[uid] = (u, LABELS.index(LABELS[u % 3]), feats)
    return Dataset("tones", LABELS, tuple(utterances)), truth


@pytest.mark.parametrize("cache", [True, False])
def test_every_row_belongs_to_one_utterance_segment(corpus, tmp_path, cache):
    dataset, truth = corpus
    store = FeatureStore(
        FeatureCache(tmp_path / "cache", enabled=cache), CFG, _ToneEncoder(), workers=1
    )
    entries = list(store.prepare(dataset).values())
    seen, padded = [], 0
    for epoch in range(2):  # different shuffles, the same rows
        batches = iterate_batches(
            store, entries, 4, ["acoustic", "ssl", "wav"], rng=np.random.default_rng(epoch)
        )
        for batch, uids in batches:
            assert batch["mask"].sum() == len(uids)
            for row, uid in enumerate(uids):
                u, label, feats = truth[uid]
                spec_hz = BIN_HZ * np.argmax(batch["spec"][row].mean(axis=1))
                seg = [k for k in range(3) if np.isclose(spec_hz, _tone_hz(u, k))]
                assert len(seg) == 1, (uid, spec_hz)  # the spectrogram names the segment
                k = seg[0]
                assert np.isclose(_peak_hz(batch["wav"][row]), _tone_hz(u, k), atol=1.0)
                assert np.isclose(batch["ssl"][row, 0, 0], _tone_hz(u, k), atol=1.0)
                np.testing.assert_allclose(batch["mfcc"][row], feats.mfcc[k], atol=1e-4)
                np.testing.assert_allclose(batch["spec"][row], feats.spec[k], atol=1e-3)
                assert batch["label"][row] == label
                seen.append((epoch, uid, k))
            assert set(batch) == {"mfcc", "spec", "ssl", "wav", "label", "mask"}
            for name, values in batch.items():
                assert not values[len(uids):].any(), name  # padding rows are empty
            padded += len(batch["mask"]) - len(uids)
    assert padded > 0  # each epoch's tail batch is padded: the check above ran
    want = sorted((e, uid, k) for e in range(2) for uid, (_, _, f) in truth.items()
                  for k in range(len(f.mfcc)))
    assert sorted(seen) == want  # every segment once per epoch


def test_padding_enters_the_fit_and_scales_to_black(corpus):
    """Padded segments take part in the fit (msjax.features.image's docstring says why): the
    padding is the -top_db floor, so every bin's minimum is the floor and padded
    columns become the image's 0 (ImageNet-standardised black)."""
    _, truth = corpus
    specs = [s for _, _, feats in truth.values() for s in feats.spec]
    stats = fit_minmax(specs)
    np.testing.assert_array_equal(stats.lo, np.full(CFG.spec_bins, -CFG.top_db, np.float32))
    _, _, feats = truth["u2"]  # 2.5 s: its third segment is half padding
    padded = feats.spec[2:3]
    assert np.all(padded[0, :, -40:] == -CFG.top_db)
    image = np.asarray(spec_to_image(padded, stats.lo, stats.hi, size=(200, 100)))
    black = -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(image[0, :, -30:], np.broadcast_to(black, (200, 30, 3)),
                               atol=1e-5)


class _StopFit(Exception):
    pass


def test_spectrogram_statistics_come_from_the_training_split(monkeypatch, tmp_path):
    """run_fold fits the min-max statistics on the training split's segments only."""
    from msjax.data.folds import Fold
    from msjax.features.store import Entry
    from msjax.runtime.distributed import Coordinator
    from msjax.train import run

    uids = {"train": ("t1", "t2"), "val": ("v1",), "test": ("x1", "x2")}
    entries = {u: Entry(u, 0, 2, u) for split in uids.values() for u in split}
    code = {u: i for i, u in enumerate(entries)}

    class Store:
        def load(self, entry, kinds):
            assert list(kinds) == ["acoustic"]
            return {"spec": np.full((2, 3, 4), code[entry.uid], np.float32)}

    class Runner:
        store = Store()
        coordinator = Coordinator()

    fitted = []

    def fake_fit(specs):
        fitted.extend(int(s[0, 0]) for s in specs)
        raise _StopFit

    monkeypatch.setattr(run, "fit_minmax", fake_fit)
    fold = Fold(0, uids["train"], uids["val"], uids["test"], ("x",), ("v",))
    with pytest.raises(_StopFit):
        run.run_fold(Runner(), tmp_path, fold, entries, {}, None, {}, LABELS)
    assert fitted == [code["t1"]] * 2 + [code["t2"]] * 2

"""FeatureStore preparation (parallel, resumable) and fixed-shape batching."""


import numpy as np
import pytest

from msjax.data import load_dataset
from msjax.data.synthetic import generate_corpus
from msjax.errors import AudioError
from msjax.features.acoustic import FeatureConfig
from msjax.features.cache import FeatureCache
from msjax.features.store import FeatureStore, iterate_batches

CFG = FeatureConfig(segment_seconds=1.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = generate_corpus(tmp_path_factory.mktemp("corpus"), num_speakers=2,
                           utterances_per_emotion=1)
    return load_dataset("synthetic", root)


def test_bad_file_keeps_earlier_work_and_a_rerun_continues(corpus, tmp_path):
    bad = corpus.utterances[9]
    original = bad.path.read_bytes()
    bad.path.write_bytes(b"RIFF....WAVEbroken")
    try:
        store = FeatureStore(FeatureCache(tmp_path / "cache"), CFG, workers=2)
        with pytest.raises(AudioError, match=bad.path.name):
            store.prepare(corpus)
        assert store.cache.stats.writes == 2 * 9  # acoustic + wav of the 9 before it
    finally:
        bad.path.write_bytes(original)
    again = FeatureStore(FeatureCache(tmp_path / "cache"), CFG, workers=2)
    entries = again.prepare(corpus)
    assert len(entries) == len(corpus) == 14
    assert again.cache.stats.writes == 2 * (14 - 9)


def test_batches_have_one_shape_and_mask_the_padding(corpus, tmp_path):
    store = FeatureStore(FeatureCache(tmp_path / "cache"), CFG, workers=1)
    entries = list(store.prepare(corpus).values())
    total = sum(e.num_segments for e in entries)
    batches = list(iterate_batches(store, entries, 8, ["acoustic", "wav"],
                                   rng=np.random.default_rng(0)))
    assert len(batches) == -(-total // 8)
    for batch, uids in batches:
        assert batch["mfcc"].shape == (8, 100, 40) and batch["spec"].shape == (8, 200, 100)
        assert batch["wav"].shape == (8, 16000) and batch["label"].shape == (8,)
        assert batch["mask"].sum() == len(uids)
        assert not batch["mfcc"][len(uids):].any()
    seen = sorted(u for _, uids in batches for u in uids)
    assert seen == sorted(e.uid for e in entries for _ in range(e.num_segments))

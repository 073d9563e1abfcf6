"""bin/extract: fill the feature cache (MFCC, spectrogram, waveform segments, SSL).

    bin/extract --dataset=emodb --data_dir=emodb --ssl=facebook/wav2vec2-base

Training reads the same cache, so a later bin/train with the same workdir (or
--config.cache_dir) starts from warm features. Interrupted, it resumes.
"""

from __future__ import annotations

from msjax.cli import common

common.define_run_flags()


def main() -> int:
    from msjax.convert.encoders import load_encoder
    from msjax.features.cache import FeatureCache
    from msjax.features.store import FeatureStore, cache_root
    from msjax.train.run import prepare_data

    config = common.resolved_config()
    workdir = common.workdir(config)
    dataset, _ = prepare_data(config, workdir)
    encoder = None
    if not config.ssl.finetune:
        encoder = load_encoder(
            config.ssl.name, seed=config.seed, extract_batch_size=config.ssl.extract_batch_size
        )
    cache = FeatureCache(cache_root(config.cache_dir, workdir))
    store = FeatureStore(
        cache, config.features, encoder, workers=config.feature_workers or None
    )
    entries = store.prepare(dataset)
    segments = sum(e.num_segments for e in entries.values())
    stats = cache.stats
    print(
        f"{dataset.name}: {len(entries)} utterances, {segments} segments in {cache.root} "
        f"({stats.hits} entries reused, {stats.writes} computed, of which {stats.corrupt} "
        "replaced damaged ones)"
    )
    return 0


def run() -> None:
    common.run(main)

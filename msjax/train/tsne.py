"""t-SNE pictures of pooled SSL features with and without enhancement (paper Figs. 7-8)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from msjax import inference
from msjax.experiment.config import ExperimentConfig
from msjax.features.store import iterate_batches
from msjax.io import checkpoint
from msjax.io.rundir import RunDir
from msjax.results import plots
from msjax.train import setup


def write_tsne(
    config: ExperimentConfig, workdir: Path, dataset, folds, entries, store, encoder
) -> None:
    """Embeds every test utterance with its fold's best model and plots both poolings.

    Writes tsne_plain.png (X_w mean-pooled over frames) and tsne_enhanced.png
    (X'_w = X_enh · X_w) into the workdir; segment vectors are averaged per utterance.
    """
    feature_cfg = config.features
    model = inference.build_model(
        config.model, len(dataset.labels), feature_cfg, encoder, config.ssl.finetune
    )
    normalize_wav = inference.wav_normalizer(encoder, config.ssl.finetune)
    image_size = tuple(config.image_size)

    @jax.jit
    def pooled(variables, batch):
        _, feats = inference.forward(
            model, variables["params"], batch, variables["norm"], image_size=image_size,
            normalize_wav=normalize_wav, return_features=True,
        )
        return feats

    plain, enhanced, labels = [], [], []
    for fold in folds:
        best_dir, _ = checkpoint.load_metadata(RunDir(workdir).fold(fold.index).root)
        variables = checkpoint.restore_best(best_dir, None)
        test = [entries[u] for u in fold.test]
        rows: dict[str, list] = {"mean_pooled": [], "enhanced": []}
        seg_uids: list[str] = []
        kinds = setup.batch_kinds(config)
        for batch, uids in iterate_batches(store, test, config.optim.eval_batch_size, kinds):
            feats = jax.device_get(pooled(variables, batch))
            for name in rows:
                if name in feats:
                    rows[name].append(feats[name][: len(uids)])
            seg_uids.extend(uids)
        # Segment vectors averaged per utterance, as the predictions are.
        pool = inference.utterance_predictions
        uids, means = pool(np.concatenate(rows["mean_pooled"]), seg_uids)
        plain.append(means)
        if rows["enhanced"]:
            enhanced.append(pool(np.concatenate(rows["enhanced"]), seg_uids)[1])
        label_of = {e.uid: e.label for e in test}
        labels.extend(label_of[u] for u in uids)
    plain, labels = np.concatenate(plain), np.array(labels)
    plots.plot_tsne(
        plain, labels, dataset.labels, RunDir(workdir).tsne_plain,
        title="SSL features, mean-pooled", seed=config.seed,
    )
    if enhanced:
        plots.plot_tsne(
            np.concatenate(enhanced), labels, dataset.labels, RunDir(workdir).tsne_enhanced,
            title="SSL features, MS-EmoBoost enhanced", seed=config.seed,
        )

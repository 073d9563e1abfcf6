"""t-SNE pictures of pooled SSL features with and without enhancement (paper Figs. 7-8)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from msjax import metrics as M
from msjax import report
from msjax.features import FeatureConfig
from msjax.train import checkpoint, setup
from msjax.train.pipeline import iterate_batches
from msjax.train.steps import model_inputs


def write_tsne(config, workdir: Path, dataset, folds, entries, store, encoder) -> None:
    """Embeds every test utterance with its fold's best model and plots both poolings.

    Writes tsne_plain.png (X_w mean-pooled over frames) and tsne_enhanced.png
    (X'_w = X_enh · X_w) into the workdir; segment vectors are averaged per utterance.
    """
    feature_cfg = FeatureConfig(**config.features)
    model = setup.build_model(
        config.model, len(dataset.labels), feature_cfg, encoder, config.ssl.finetune
    )
    normalize = setup.wav_normalizer(encoder) if config.ssl.finetune else None
    image_size = tuple(config.image_size)

    @jax.jit
    def pooled(variables, batch):
        inputs = model_inputs(batch, variables["norm"], image_size, normalize)
        _, feats = model.apply(
            {"params": variables["params"]}, inputs, train=False, return_features=True
        )
        return feats

    plain, enhanced, labels = [], [], []
    for fold in folds:
        best_dir, _ = checkpoint.load_metadata(workdir / f"fold_{fold.index:02d}")
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
        uids, means = M.utterance_predictions(np.concatenate(rows["mean_pooled"]), seg_uids)
        plain.append(means)
        if rows["enhanced"]:
            enhanced.append(M.utterance_predictions(np.concatenate(rows["enhanced"]), seg_uids)[1])
        label_of = {e.uid: e.label for e in test}
        labels.extend(label_of[u] for u in uids)
    plain, labels = np.concatenate(plain), np.array(labels)
    report.plot_tsne(
        plain, labels, dataset.labels, workdir / "tsne_plain.png",
        title="SSL features, mean-pooled", seed=config.seed,
    )
    if enhanced:
        report.plot_tsne(
            np.concatenate(enhanced), labels, dataset.labels, workdir / "tsne_enhanced.png",
            title="SSL features, MS-EmoBoost enhanced", seed=config.seed,
        )

"""Benchmark: what MS-EmoBoost learns on EMODB, beside its ablation and a classic peer.

EMODB 10-fold leave-one-speaker-out (the copy beside the repository by default),
three systems on the same folds, WA and UA (percent, mean ± std over folds):

  full      msjax MS-EmoBoost, the training loop itself (`train_and_evaluate`):
            MFCC and spectrogram guidance pooling frozen SSL features.
  baseline  the same run with `model.baseline=true`: mean-pooled SSL features and
            the classifier only.
  svm       what a user would pick instead: per-utterance statistics of librosa
            MFCCs (40, and their deltas) and RMS energy (mean, std, min, max) ->
            standardised -> scikit-learn SVC (RBF, C=10, gamma="scale"), trained on
            the fold's training and validation speakers (it needs no early stopping).

The msjax runs use configs/emodb.py with the benchmark's defaults (`bench_config`: a
random tiny encoder, 10 epochs, a random AlexNet) and validate on held-out speakers;
`--config.x=y` overrides any field as for bin/train: `--config.ssl.name` a checkpoint
directory or hub id for real results (`random:<preset>` runs offline with random weights,
a smoke setting), `--config.model.alexnet_weights=FILE` ported ImageNet AlexNet weights.
Without `--config.optim.patience` no fold stops early (patience = the epoch count). The
SVM uses the config's data_dir and seed.

    python bench/learning.py [--systems=full,baseline,svm] [--workdir=DIR]
        [--config.data_dir=DIR] [--config.ssl.name=NAME] [--config.optim.num_epochs=N]
        [--config.image_size='(64, 96)'] [--config.model.lstm_hidden=32] ...
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msjax.configs import emodb  # noqa: E402

EMODB = REPO.parent / "shared" / "data" / "emodb"
SYSTEMS = ("full", "baseline", "svm")


def bench_config() -> ml_collections.ConfigDict:
    """EMODB's config with a cheap, offline msjax setting (random weights, 10 epochs)."""
    config = emodb.get_config()
    config.data_dir = str(EMODB)
    config.ssl.name = "random:tiny"
    config.optim.num_epochs = 10
    config.model.alexnet_weights = ""
    config.model.random_alexnet = True
    return config


config_flags.DEFINE_config_dict("config", bench_config(), "The msjax runs' config.")
flags.DEFINE_list("systems", list(SYSTEMS), f"Systems to run, from {', '.join(SYSTEMS)}.")
flags.DEFINE_string("workdir", None, "Run directories (default: a new temporary one).")
FLAGS = flags.FLAGS


def msjax_run(
    config: ml_collections.ConfigDict, workdir: Path, baseline: bool
) -> tuple[list, list]:
    """Per-fold (WA list, UA list) of one msjax training run over all folds."""
    from msjax.train.run import train_and_evaluate

    config = config.copy_and_resolve_references()
    config.model.baseline = baseline
    results = train_and_evaluate(config, workdir)
    return [f["wa"] for f in results["folds"]], [f["ua"] for f in results["folds"]]


def utterance_statistics(wav: np.ndarray, sr: int) -> np.ndarray:
    """MFCC, delta-MFCC and RMS-energy statistics of one utterance. [N] -> [170]"""
    import librosa

    mfcc = librosa.feature.mfcc(y=wav, sr=sr, n_mfcc=40)  # [40, T]
    delta = librosa.feature.delta(mfcc)
    rms = librosa.feature.rms(y=wav)[0]
    return np.concatenate([
        mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1),
        [rms.mean(), rms.std(), rms.min(), rms.max()],
    ])


def svm_run(config: ml_collections.ConfigDict) -> tuple[list, list]:
    """Per-fold (WA list, UA list) of the MFCC/energy + RBF SVM peer on the same folds."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from msjax.data import load_dataset
    from msjax.data.folds import make_folds
    from msjax.features.audio import load_audio
    from msjax.results import metrics

    dataset = load_dataset("emodb", config.data_dir)
    label_id = {name: i for i, name in enumerate(dataset.labels)}
    x = {u.uid: utterance_statistics(load_audio(u.path), 16000) for u in dataset.utterances}
    y = {u.uid: label_id[u.label] for u in dataset.utterances}
    was, uas = [], []
    for fold in make_folds(dataset, "loso", seed=config.seed):
        train = list(fold.train) + list(fold.val)
        clf = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale"))
        clf.fit(np.stack([x[u] for u in train]), [y[u] for u in train])
        pred = clf.predict(np.stack([x[u] for u in fold.test]))
        cm = metrics.confusion_matrix([y[u] for u in fold.test], pred, len(dataset.labels))
        was.append(metrics.weighted_accuracy(cm))
        uas.append(metrics.unweighted_accuracy(cm))
    return was, uas


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not set(FLAGS.systems) <= set(SYSTEMS):
        raise app.UsageError(f"--systems={','.join(FLAGS.systems)}: choose from {SYSTEMS}")
    config = FLAGS.config
    if "optim.patience" not in config_flags.get_override_values(FLAGS["config"]):
        config.optim.patience = config.optim.num_epochs
    from msjax import runtime

    runtime.configure()  # as bin/train does, before JAX starts
    workdir = Path(FLAGS.workdir or tempfile.mkdtemp(prefix="msjax-learning-"))
    rows = []
    for system in FLAGS.systems:
        start = time.perf_counter()
        if system == "svm":
            was, uas = svm_run(config)
        else:
            was, uas = msjax_run(config, workdir / system, baseline=system == "baseline")
        seconds = time.perf_counter() - start
        rows.append((system, was, uas, seconds))
    height, width = config.image_size
    print(
        f"EMODB {len(rows[0][1])}-fold LOSO; msjax: --config.ssl.name={config.ssl.name}, "
        f"{config.optim.num_epochs} epochs at lr {config.optim.learning_rate:g}, "
        f"image {height}x{width}, Bi-LSTM {config.model.lstm_hidden}, AlexNet "
        f"{config.model.alexnet_weights or 'random'}, seed {config.seed}"
    )
    print(f"{'system':10s} {'WA %':>14s} {'UA %':>14s} {'time s':>8s}")
    for system, was, uas, seconds in rows:
        wa, ua = 100 * np.array(was), 100 * np.array(uas)
        print(f"{system:10s} {wa.mean():6.2f} ± {wa.std():5.2f} {ua.mean():6.2f} ± {ua.std():5.2f}"
              f" {seconds:8.0f}")


if __name__ == "__main__":
    app.run(main)

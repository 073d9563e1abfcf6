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

The msjax runs use --ssl (a checkpoint directory or hub id for real results;
`random:<preset>` runs offline with random weights, a smoke setting), --epochs with
patience equal to it, Adam at --lr, and validate on held-out speakers. Sizes are flags, so a
cheap setting (small images, small Bi-LSTM, random AlexNet) is one command line.

    python bench/learning.py [--data DIR] [--ssl NAME] [--epochs N] [--lr LR] [--image H W]
        [--lstm-hidden N] [--alexnet-weights FILE] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EMODB = REPO.parent / "shared" / "data" / "emodb"


def msjax_run(args: argparse.Namespace, workdir: Path, baseline: bool) -> tuple[list, list]:
    """Per-fold (WA list, UA list) of one msjax training run over all folds."""
    from configs import emodb
    from msjax.train.run import train_and_evaluate

    config = emodb.get_config()
    config.data_dir = str(args.data)
    config.ssl.name = args.ssl
    config.optim.learning_rate = args.lr
    config.optim.num_epochs = args.epochs
    config.optim.patience = args.epochs
    config.image_size = tuple(args.image)
    config.model.lstm_hidden = args.lstm_hidden
    config.model.baseline = baseline
    config.model.alexnet_weights = args.alexnet_weights
    config.model.random_alexnet = not args.alexnet_weights
    config.seed = args.seed
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


def svm_run(args: argparse.Namespace) -> tuple[list, list]:
    """Per-fold (WA list, UA list) of the MFCC/energy + RBF SVM peer on the same folds."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from msjax import metrics
    from msjax.audio import load_audio
    from msjax.data import load_dataset
    from msjax.data.folds import make_folds

    dataset = load_dataset("emodb", args.data)
    label_id = {name: i for i, name in enumerate(dataset.labels)}
    x = {u.uid: utterance_statistics(load_audio(u.path), 16000) for u in dataset.utterances}
    y = {u.uid: label_id[u.label] for u in dataset.utterances}
    was, uas = [], []
    for fold in make_folds(dataset, "loso", seed=args.seed):
        train = list(fold.train) + list(fold.val)
        clf = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale"))
        clf.fit(np.stack([x[u] for u in train]), [y[u] for u in train])
        pred = clf.predict(np.stack([x[u] for u in fold.test]))
        cm = metrics.confusion_matrix([y[u] for u in fold.test], pred, len(dataset.labels))
        was.append(metrics.weighted_accuracy(cm))
        uas.append(metrics.unweighted_accuracy(cm))
    return was, uas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=EMODB)
    parser.add_argument("--ssl", default="random:tiny", help="SSL encoder for msjax runs")
    parser.add_argument("--epochs", type=int, default=10, help="msjax epoch budget per fold")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (paper: 1e-5)")
    parser.add_argument("--image", type=int, nargs=2, default=(256, 384))
    parser.add_argument("--lstm-hidden", type=int, default=256)
    parser.add_argument("--alexnet-weights", default="", help="ported ImageNet AlexNet (.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--systems", nargs="+", default=["full", "baseline", "svm"],
                        choices=["full", "baseline", "svm"])
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="msjax-learning-"))
    rows = []
    for system in args.systems:
        start = time.perf_counter()
        if system == "svm":
            was, uas = svm_run(args)
        else:
            was, uas = msjax_run(args, workdir / system, baseline=system == "baseline")
        seconds = time.perf_counter() - start
        rows.append((system, was, uas, seconds))
    print(
        f"EMODB {len(rows[0][1])}-fold LOSO; msjax: --ssl={args.ssl}, {args.epochs} epochs "
        f"at lr {args.lr:g}, "
        f"image {args.image[0]}x{args.image[1]}, Bi-LSTM {args.lstm_hidden}, AlexNet "
        f"{'ImageNet' if args.alexnet_weights else 'random'}, seed {args.seed}"
    )
    print(f"{'system':10s} {'WA %':>14s} {'UA %':>14s} {'time s':>8s}")
    for system, was, uas, seconds in rows:
        wa, ua = 100 * np.array(was), 100 * np.array(uas)
        print(f"{system:10s} {wa.mean():6.2f} ± {wa.std():5.2f} {ua.mean():6.2f} ± {ua.std():5.2f}"
              f" {seconds:8.0f}")


if __name__ == "__main__":
    main()

"""Classification metrics computed on the host from confusion matrices (numpy).

Conventions (the paper's, and CM's):

* Rows of a confusion matrix are true classes, columns predicted classes.
* WA (weighted accuracy) = correct / all, i.e. plain accuracy, which weights each
  class by its support.
* UA (unweighted accuracy) = mean per-class recall. Classes with no support (absent
  from y_true, as can happen in one speaker's test fold) have no recall and are left
  out of the mean rather than counted as 0 or 1.
* Macro F1 averages per-class F1 over the classes that occur in y_true or in y_pred
  (scikit-learn's default): a class that is predicted but never true scores F1 = 0,
  a class that is neither true nor predicted is left out.
* The items are utterances, each predicted from the mean of its segments'
  log-softmax (msjax.inference.utterance_predictions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts (true, predicted) pairs.

    Args:
        y_true: [N] true class indices in [0, num_classes).
        y_pred: [N] predicted class indices in [0, num_classes).
        num_classes: C.

    Returns:
        int64 [C, C]; entry [i, j] counts items of true class i predicted as j.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} items but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} must hold integer classes in [0, {num_classes})")
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def weighted_accuracy(cm: np.ndarray) -> float:
    """Returns WA = correct / all items of confusion matrix `cm` [C, C]."""
    cm = _check(cm)
    return float(np.trace(cm) / cm.sum())


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Returns float64 [C] recall of each class; NaN for classes with no support."""
    cm = _check(cm)
    support = cm.sum(axis=1)
    recall = np.full(cm.shape[0], np.nan)
    present = support > 0
    recall[present] = np.diag(cm)[present] / support[present]
    return recall


def unweighted_accuracy(cm: np.ndarray) -> float:
    """Returns UA = mean recall over the classes that have support in `cm` [C, C]."""
    recall = per_class_recall(cm)
    return float(np.mean(recall[~np.isnan(recall)]))


def macro_f1(cm: np.ndarray) -> float:
    """Returns the mean F1 over classes that are true or predicted at least once.

    F1 = 2 TP / (2 TP + FP + FN) for each class of `cm` [C, C].
    """
    cm = _check(cm)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    seen = (support + predicted) > 0
    f1 = 2 * tp[seen] / (support[seen] + predicted[seen])
    return float(np.mean(f1))


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Returns a numerically stable log-softmax of `logits` along `axis`."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Returns (mean, std) of per-fold results.

    The std is the population standard deviation (ddof=0, numpy's default), the
    spread of the folds actually run rather than an estimate for unseen folds;
    a single value gives std 0.

    Args:
        values: [K] finite numbers, e.g. the WA of each fold.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("summarize() needs at least one value")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"summarize() got non-finite values: {values.tolist()}")
    return float(values.mean()), float(values.std(ddof=0))


def _check(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative counts")
    if cm.sum() == 0:
        raise ValueError("confusion matrix is empty (no items)")
    return cm

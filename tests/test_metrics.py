"""Tests for the host-side metrics, on cases worked out by hand."""

import numpy as np
import pytest
from sklearn import metrics as skm

from msjax import inference
from msjax.results import metrics

# Three classes, rows = true. Supports 4, 2, 4; correct 3 + 1 + 3 = 7 of 10.
CM3 = np.array(
    [
        [3, 1, 0],
        [1, 1, 0],
        [0, 1, 3],
    ]
)
# The same matrix as label lists.
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 0, 1, 1, 2, 2, 2]


def test_confusion_matrix_counts_rows_as_true():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM3)
    assert metrics.confusion_matrix([1], [2], 4)[1, 2] == 1  # [true, pred]
    np.testing.assert_array_equal(metrics.confusion_matrix([], [], 2), np.zeros((2, 2)))


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.confusion_matrix([0, 1], [0, -1], 3)
    with pytest.raises(ValueError, match="items"):
        metrics.confusion_matrix([0, 1], [0], 3)


def test_hand_computed_three_class_metrics():
    # WA = 7 / 10.
    assert metrics.weighted_accuracy(CM3) == pytest.approx(0.7)
    # Recalls 3/4, 1/2, 3/4; UA = (0.75 + 0.5 + 0.75) / 3 = 2/3.
    np.testing.assert_allclose(metrics.per_class_recall(CM3), [0.75, 0.5, 0.75])
    assert metrics.unweighted_accuracy(CM3) == pytest.approx(2 / 3)
    # F1 = 2TP / (2TP + FP + FN):
    #   class 0: TP 3, FP 1, FN 1 -> 6/8 = 3/4
    #   class 1: TP 1, FP 2, FN 1 -> 2/5
    #   class 2: TP 3, FP 0, FN 1 -> 6/7
    assert metrics.macro_f1(CM3) == pytest.approx((3 / 4 + 2 / 5 + 6 / 7) / 3)


def test_absent_class_is_excluded_from_ua():
    # Class 3 never occurs (no support, never predicted): UA and F1 ignore it.
    cm = np.zeros((4, 4), dtype=np.int64)
    cm[:3, :3] = CM3
    recall = metrics.per_class_recall(cm)
    np.testing.assert_allclose(recall[:3], [0.75, 0.5, 0.75])
    assert np.isnan(recall[3])
    assert metrics.unweighted_accuracy(cm) == pytest.approx(2 / 3)
    assert metrics.weighted_accuracy(cm) == pytest.approx(0.7)
    assert metrics.macro_f1(cm) == pytest.approx((3 / 4 + 2 / 5 + 6 / 7) / 3)


def test_predicted_but_absent_class_counts_as_zero_f1():
    # One class-2 item mispredicted as class 3, which is never true.
    cm = np.zeros((4, 4), dtype=np.int64)
    cm[:3, :3] = CM3
    cm[2, 2] = 2
    cm[2, 3] = 1
    # Recalls 3/4, 1/2, 2/4; class 3 has no support.
    assert metrics.unweighted_accuracy(cm) == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    # F1: 3/4, 2/5, class 2: TP 2, FP 0, FN 2 -> 4/6, class 3: 0.
    assert metrics.macro_f1(cm) == pytest.approx((3 / 4 + 2 / 5 + 4 / 6 + 0) / 4)


def test_agrees_with_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, size=200))
    cm = metrics.confusion_matrix(y_true, y_pred, 5)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=range(5)))
    assert metrics.weighted_accuracy(cm) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert metrics.unweighted_accuracy(cm) == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred)
    )
    assert metrics.macro_f1(cm) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))


def test_metrics_reject_empty_or_malformed_matrices():
    with pytest.raises(ValueError, match="empty"):
        metrics.weighted_accuracy(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="square"):
        metrics.unweighted_accuracy(np.ones((2, 3)))


def test_utterance_predictions_average_segments_in_first_appearance_order():
    # Segments of "b", "a", "b", "c", "b" (an utterance's segments need not be adjacent).
    logprobs = np.log(
        np.array(
            [
                [0.2, 0.8],  # b
                [0.9, 0.1],  # a
                [0.6, 0.4],  # b
                [0.5, 0.5],  # c
                [0.4, 0.6],  # b
            ]
        )
    )
    ids, mean = inference.utterance_predictions(logprobs, ["b", "a", "b", "c", "b"])
    assert ids.tolist() == ["b", "a", "c"]
    # Mean of log-probs, not log of mean probs: b's first column is
    # (ln 0.2 + ln 0.6 + ln 0.4) / 3 = ln(0.048) / 3.
    want = np.array(
        [
            [np.log(0.048) / 3, np.log(0.8 * 0.4 * 0.6) / 3],
            [np.log(0.9), np.log(0.1)],
            [np.log(0.5), np.log(0.5)],
        ]
    )
    np.testing.assert_allclose(mean, want)
    # b: ln(0.048)/3 < ln(0.192)/3 -> class 1; a -> class 0.
    assert mean.argmax(-1).tolist() == [1, 0, 0]


def test_utterance_predictions_with_int_ids():
    logprobs = np.array([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])
    ids, mean = inference.utterance_predictions(logprobs, [7, 3, 7])
    assert ids.tolist() == [7, 3]
    np.testing.assert_allclose(mean, [[-3.0, -4.0], [-3.0, -4.0]])
    with pytest.raises(ValueError, match=r"\[S, C\]"):
        inference.utterance_predictions(logprobs, [7, 3])


def test_log_softmax_normalises_rows():
    logits = np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]])
    np.testing.assert_allclose(metrics.log_softmax(logits), np.log([[0.5, 0.5], [0.25, 0.75]]))


def test_summarize_uses_population_std():
    # Values 0.6, 0.7, 0.8: mean 0.7; deviations -0.1, 0, 0.1; population
    # variance (0.01 + 0 + 0.01) / 3, std sqrt(0.02 / 3).
    mean, std = metrics.summarize([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(np.sqrt(0.02 / 3))
    assert metrics.summarize([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        metrics.summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.summarize([0.5, float("nan")])

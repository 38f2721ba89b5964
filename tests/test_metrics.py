"""mlpfast.metrics against scikit-learn's metrics on the same predictions."""
import warnings

import numpy as np
import pytest

import mlpfast as mf

sk_metrics = pytest.importorskip("sklearn.metrics")


def prediction_cases():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 10, 500)
    noisy = np.where(rng.random(500) < 0.7, y, rng.integers(0, 10, 500))
    return {
        "ten classes": (y, noisy),
        "class 3 never predicted": (y, np.where(noisy == 3, 4, noisy)),
        "class 9 never present": (np.where(y == 9, 0, y), noisy),
        "perfect": (y, y.copy()),
        "a class only predicted": (np.array([2, 2, 1]), np.array([5, 2, 1])),
        "labels with gaps": (np.array([0, 7, 7, 12, 0, 3]), np.array([7, 7, 0, 12, 3, 3])),
    }


CASES = prediction_cases()


@pytest.mark.parametrize("case", CASES)
def test_scores_equal_scikit_learn(case):
    y_true, y_pred = CASES[case]
    scores = mf.metrics.precision_recall_f1(y_true, y_pred)
    p, r, f, s = sk_metrics.precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    np.testing.assert_array_equal(scores["labels"], np.union1d(y_true, y_pred))
    for ours, theirs in ((scores["precision"], p), (scores["recall"], r), (scores["f1"], f),
                         (scores["support"], s)):
        np.testing.assert_array_equal(ours, theirs)
    for average in ("macro", "weighted"):
        expected = sk_metrics.precision_recall_fscore_support(y_true, y_pred, average=average,
                                                              zero_division=0)
        assert [scores[average][k] for k in ("precision", "recall", "f1")] == \
            list(expected[:3])
    assert scores["accuracy"] == sk_metrics.accuracy_score(y_true, y_pred)


def test_num_classes_reports_classes_absent_from_both():
    y_true, y_pred = np.array([0, 1, 1, 3]), np.array([0, 1, 3, 3])
    scores = mf.metrics.precision_recall_f1(y_true, y_pred, num_classes=6)
    labels = list(range(6))
    p, r, f, s = sk_metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                            zero_division=0)
    np.testing.assert_array_equal(scores["support"], [1, 2, 0, 1, 0, 0])
    for ours, theirs in ((scores["precision"], p), (scores["recall"], r), (scores["f1"], f)):
        np.testing.assert_array_equal(ours, theirs)
    macro = sk_metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                       average="macro", zero_division=0)
    assert scores["macro"]["f1"] == macro[2] == pytest.approx((1 + 1 / 1.5 * 1 + 2 / 3) / 6)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("digits", [2, 4, 14])     # 14: wider than "weighted avg"
def test_report_text_and_dict_equal_scikit_learn(case, digits):
    y_true, y_pred = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # mlpfast never warns
        text = mf.metrics.classification_report(y_true, y_pred, digits=digits)
        as_dict = mf.metrics.classification_report(y_true, y_pred, output_dict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # scikit-learn warns on zero division
        assert text == sk_metrics.classification_report(y_true, y_pred, digits=digits)
        assert as_dict == sk_metrics.classification_report(y_true, y_pred, output_dict=True)


def test_report_with_target_names_covers_every_named_class():
    y_true, y_pred = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 2, 1, 2, 2, 1])
    names = ["zero", "one", "two", "three (never seen)"]
    text = mf.metrics.classification_report(y_true, y_pred, target_names=names, digits=3)
    expected = sk_metrics.classification_report(y_true, y_pred, labels=[0, 1, 2, 3],
                                                target_names=names, digits=3, zero_division=0)
    assert text == expected
    assert text.splitlines()[5].split() == ["three", "(never", "seen)", "0.000", "0.000",
                                            "0.000", "0"]
    assert mf.metrics.classification_report(y_true, y_pred, target_names=names,
                                            output_dict=True) == \
        sk_metrics.classification_report(y_true, y_pred, labels=[0, 1, 2, 3],
                                         target_names=names, output_dict=True, zero_division=0)


def test_evaluate_confusion_matrix_scores_and_loss_equal_the_references():
    """evaluate over several batches (the last one short): the confusion matrix is true x
    predicted (scikit-learn's confusion_matrix), the scores and accuracy scikit-learn's on
    its argmax predictions, the loss the float64 mean cross-entropy of its logits."""
    rng = np.random.default_rng(5)
    model = mf.MLP([4, 6, 3], backend="numpy", dtype=np.float64, seed=2)
    x = 2.0 * rng.standard_normal((50, 4))
    y = rng.integers(0, 3, 50)
    result = mf.evaluate(model, x, y, batch_size=16)
    logits = model(x)
    predicted = logits.argmax(axis=1)
    assert len(set(predicted.tolist())) > 1          # not one column, so a transpose shows
    matrix = sk_metrics.confusion_matrix(y, predicted, labels=[0, 1, 2])
    assert not np.array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(result["confusion_matrix"], matrix)
    assert result["accuracy"] == sk_metrics.accuracy_score(y, predicted) and result["n"] == 50
    p, r, f, support = sk_metrics.precision_recall_fscore_support(y, predicted, labels=[0, 1, 2],
                                                                  zero_division=0)
    for key, theirs in (("precision", p), ("recall", r), ("f1", f), ("support", support)):
        np.testing.assert_allclose(result["scores"][key], theirs, rtol=1e-15)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert result["loss"] == pytest.approx(-log_softmax[np.arange(50), y].mean(), rel=1e-12)


@pytest.mark.parametrize("call,error,match", [
    (lambda m: m.precision_recall_f1([0, 1], [0]), ValueError, "same length"),
    (lambda m: m.precision_recall_f1([0.5, 1], [0, 1]), TypeError, "y_true must hold integer"),
    (lambda m: m.precision_recall_f1([], []), ValueError, "y_true must be a non-empty"),
    (lambda m: m.precision_recall_f1([0, -1], [0, 1]), ValueError, "labels >= 0"),
    (lambda m: m.precision_recall_f1([0, 4], [0, 1], num_classes=3), ValueError,
     r"\[0, 3\) for num_classes=3, found 4"),
    # the first label out of range, in y_true or in y_pred (not dropped from the counts)
    (lambda m: m.precision_recall_f1([0, 3], [0, 1], num_classes=3), ValueError,
     r"\[0, 3\) for num_classes=3, found 3"),
    (lambda m: m.precision_recall_f1([0, 1], [0, 3], num_classes=3), ValueError,
     r"\[0, 3\) for num_classes=3, found 3"),
    (lambda m: m.classification_report([0, 1], [0, 1], target_names=["a"], num_classes=2),
     ValueError, "target_names must name 2 classes, got 1"),
    (lambda m: m.classification_report([0, 1], [0, 1], target_names=["a", "b", "c"],
                                       num_classes=2),
     ValueError, "target_names must name 2 classes, got 3"),
    (lambda m: m.precision_recall_f1([0, 0], [0, 0], num_classes=True), ValueError,
     "num_classes must be a positive integer or None, got True"),
    (lambda m: m.precision_recall_f1([0, 0], [0, 0], num_classes=0), ValueError,
     "num_classes must be a positive integer or None, got 0"),
    (lambda m: m.classification_report([0, 1], [0, 1], digits=-1), ValueError, "digits"),
    (lambda m: m.classification_report([0, 1], [0, 1], digits=True), ValueError, "digits"),
    (lambda m: m.classification_report([0, 1], [0, 1], digits=2.0), ValueError, "digits"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call(mf.metrics)

"""Classification metrics: per-class precision, recall and F1, and scikit-learn's report.

For classes c, with tp_c the samples of class c predicted c, pred_c the samples predicted c
and support_c the samples of class c:

    precision_c = tp_c / pred_c      recall_c = tp_c / support_c
    f1_c        = 2 tp_c / (support_c + pred_c)   (the harmonic mean of the two)
    macro       = the plain mean over classes     weighted = the mean weighted by support
    accuracy    = sum_c tp_c / n

Zero division: a ratio whose denominator is 0 (a class never predicted, or never present)
is 0, without a warning. That is the value scikit-learn returns by default
(``zero_division="warn"``, which also warns), so the numbers and the report below equal
``sklearn.metrics.precision_recall_fscore_support`` / ``classification_report`` on the
same labels (the tests compare them).

Classes: ``num_classes=None`` takes the labels present in y_true or y_pred, in order, as
scikit-learn does; ``num_classes=k`` reports classes 0..k-1, including those absent from
both (their scores and support are 0), as scikit-learn does with ``labels=range(k)``.
"""
import numpy as np

HEADERS = ("precision", "recall", "f1-score", "support")


def _check_labels(values, name):
    a = np.asarray(values)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of labels, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    if a.min() < 0:
        raise ValueError(f"{name} must hold labels >= 0, found {a.min()}")
    return a.astype(np.int64, copy=False)


def _classes(y_true, y_pred, num_classes):
    """The class labels reported, as an int64 array."""
    if num_classes is None:
        return np.union1d(y_true, y_pred)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    top = max(int(y_true.max()), int(y_pred.max()))
    if top >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) for num_classes="
                         f"{num_classes}, found {top}")
    return np.arange(num_classes, dtype=np.int64)


def _ratio(numerator, denominator):
    """numerator / denominator elementwise, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator != 0)


def precision_recall_f1(y_true, y_pred, num_classes=None):
    """Per-class and averaged scores of the predictions ``y_pred`` of labels ``y_true``.

    Returns {"labels": (k,) int64, "precision", "recall", "f1": (k,) float64,
    "support": (k,) int64, "macro": {"precision", "recall", "f1"},
    "weighted": {"precision", "recall", "f1"}, "accuracy": float}.
    """
    y_true, y_pred = _check_labels(y_true, "y_true"), _check_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got "
                         f"{y_true.shape[0]} and {y_pred.shape[0]}")
    labels = _classes(y_true, y_pred, num_classes)
    size = int(max(labels[-1], y_true.max(), y_pred.max())) + 1
    support_all = np.bincount(y_true, minlength=size)
    predicted_all = np.bincount(y_pred, minlength=size)
    tp_all = np.bincount(y_true[y_true == y_pred], minlength=size)
    support, predicted, tp = support_all[labels], predicted_all[labels], tp_all[labels]
    scores = {"precision": _ratio(tp, predicted), "recall": _ratio(tp, support),
              "f1": _ratio(2.0 * tp, support + predicted)}
    result = {"labels": labels, **scores, "support": support}
    result["macro"] = {k: float(np.average(v)) for k, v in scores.items()}
    result["weighted"] = {k: float(np.average(v, weights=support)) for k, v in scores.items()}
    result["accuracy"] = int(tp.sum()) / y_true.shape[0]
    return result


def classification_report(y_true, y_pred, target_names=None, digits=2, output_dict=False,
                          num_classes=None):
    """scikit-learn's ``classification_report`` of these predictions, text or dict.

    ``target_names``: one name per class reported (classes 0..len-1 when ``num_classes``
    is None). Text: a row per class (precision, recall, f1-score, support), then the
    accuracy, the macro and the weighted averages. ``output_dict``: {name: {"precision",
    "recall", "f1-score", "support"}, "accuracy": float, "macro avg": {...},
    "weighted avg": {...}}, every number a float, as scikit-learn gives.
    """
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or digits < 0:
        raise ValueError(f"digits must be a non-negative integer, got {digits!r}")
    if target_names is not None:
        target_names = [str(name) for name in target_names]
        if num_classes is None:
            num_classes = len(target_names)
    scores = precision_recall_f1(y_true, y_pred, num_classes)
    if target_names is None:
        target_names = [str(label) for label in scores["labels"]]
    elif len(target_names) != len(scores["labels"]):
        raise ValueError(f"target_names must name {len(scores['labels'])} classes, got "
                         f"{len(target_names)} names")
    rows = [(name, scores["precision"][i], scores["recall"][i], scores["f1"][i],
             int(scores["support"][i])) for i, name in enumerate(target_names)]
    total = int(scores["support"].sum())
    averages = [(f"{kind} avg", scores[kind]["precision"], scores[kind]["recall"],
                 scores[kind]["f1"], total) for kind in ("macro", "weighted")]
    if output_dict:
        report = {row[0]: dict(zip(HEADERS, map(float, row[1:]))) for row in rows}
        report["accuracy"] = scores["accuracy"]
        report.update({row[0]: dict(zip(HEADERS, map(float, row[1:]))) for row in averages})
        return report
    width = max(max(len(name) for name in target_names), len("weighted avg"), digits)
    row_format = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = ("{:>{width}s} " + " {:>9}" * 4).format("", *HEADERS, width=width) + "\n\n"
    text += "".join(row_format.format(*row, width=width, digits=digits) for row in rows)
    text += "\n" + ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", scores["accuracy"], total, width=width, digits=digits)
    text += "".join(row_format.format(*row, width=width, digits=digits) for row in averages)
    return text

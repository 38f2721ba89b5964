"""HTML tables for Jupyter: what ``_repr_html_`` returns for models, summaries, training
histories and evaluation results. Plain HTML (every cell escaped, no styles, no scripts),
so a notebook shows a table where a terminal shows the text form.

    table(header, rows, caption=None, notes=())   one <table>, notes as lines under it
    model_html(model)                 a Sequential: layers, their parameters, totals
    history_html(records)             fit's per-epoch records, one row per epoch
    evaluation_html(result)           evaluate's loss, accuracy, n and confusion matrix
"""
import numbers
from html import escape


def table(header, rows, caption=None, notes=()):
    """``header`` (cells of the first row), ``rows`` (lists of cells, each shown as str),
    ``caption`` above, ``notes`` (lines) below."""
    def cells(tag, values):
        return "".join(f"<{tag}>{escape(str(v))}</{tag}>" for v in values)

    parts = ["<table>"]
    if caption is not None:
        parts.append(f"<caption>{escape(caption)}</caption>")
    parts.append(f"<thead><tr>{cells('th', header)}</tr></thead><tbody>")
    parts += [f"<tr>{cells('td', row)}</tr>" for row in rows]
    parts.append("</tbody></table>")
    if notes:
        parts.append("<p>" + "<br>".join(escape(line) for line in notes) + "</p>")
    return "".join(parts)


def model_html(model):
    """Each layer of ``model`` (a Sequential) with its parameters' shapes and count."""
    rows, total = [], 0
    for index, layer in enumerate(model.layers):
        params = list(layer.named_parameters())
        count = sum(_size(p.shape) for _, p in params)
        total += count
        shapes = ", ".join(f"{name} {tuple(p.shape)}" for name, p in params)
        rows.append([index, repr(layer), shapes, f"{count:,}"])
    return table(["#", "layer", "parameters", "count"], rows, caption=type(model).__name__,
                 notes=[f"Total params: {total:,} ({model.dtype.name}, backend "
                        f"{model.backend.name})"])


def history_html(records):
    """One row per epoch record (dicts from fit), a column per key any record has."""
    keys = []
    for record in records:
        keys += [k for k in record if k not in keys]
    rows = [[_format(k, record.get(k)) for k in keys] for record in records]
    epochs = f"{len(records)} epoch" + ("" if len(records) == 1 else "s")
    return table([_header(k) for k in keys], rows, caption=f"History ({epochs})")


def evaluation_html(result):
    """loss, accuracy and n, then the per-class scores and the confusion matrix (rows
    true, columns predicted)."""
    shown = [k for k in result if k not in ("confusion_matrix", "scores")]
    html = table([_header(k) for k in shown], [[_format(k, result[k]) for k in shown]],
                 caption="evaluate")
    scores = result.get("scores")
    if scores is not None:
        rows = [[int(label)] + [f"{scores[k][i]:.4f}" for k in ("precision", "recall", "f1")]
                + [f"{int(scores['support'][i]):,}"] for i, label in enumerate(scores["labels"])]
        rows += [[f"{kind} avg"] + [f"{scores[kind][k]:.4f}" for k in ("precision", "recall",
                                                                          "f1")]
                 + [f"{int(scores['support'].sum()):,}"] for kind in ("macro", "weighted")]
        html += table(["class", "precision", "recall", "f1", "support"], rows,
                      caption="per-class scores")
    matrix = result.get("confusion_matrix")
    if matrix is not None:
        html += table(["true \\ predicted"] + list(range(len(matrix))),
                      [[i] + list(row) for i, row in enumerate(matrix.tolist())],
                      caption="confusion matrix (rows: true class, columns: predicted)")
    return html


def _size(shape):
    count = 1
    for s in shape:
        count *= int(s)
    return count


def _header(key):
    return key.replace("_", " ") + (" (%)" if "accuracy" in key else "")


def _format(key, value):
    """A cell: accuracies in percent, throughput and counts with thousands separators."""
    if value is None:
        return ""
    if "accuracy" in key:
        return f"{100 * value:.2f}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral) or key == "samples_per_s":
        return f"{value:,.0f}"
    return f"{value:.4g}"

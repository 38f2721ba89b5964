"""Jupyter's views (``_repr_html_``) of a model, a summary, a History and evaluate's result:
the HTML is parsed back into tables and every cell is checked against the object; the
progress bar takes tqdm's automatic (notebook in Jupyter) form."""
import sys
import types
from html.parser import HTMLParser

import numpy as np

import mlpfast as mf
from mlpfast import tables
from mlpfast.progress import Progress


class Tables(HTMLParser):
    """Reads back what tables.table writes: [{"caption", "header", "rows", "notes"}]."""

    def __init__(self, html):
        super().__init__()
        self.tables, self.text, self.row = [], None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": None, "header": [], "rows": [], "notes": []})
        elif tag == "tr":
            self.row = []
        elif tag in ("th", "td", "caption", "p"):
            self.text = ""
        elif tag == "br":
            self.tables[-1]["notes"].append(self.text)
            self.text = ""

    def handle_data(self, data):
        if self.text is not None:
            self.text += data

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self.row.append(self.text)
        elif tag == "tr":
            table = self.tables[-1]
            if table["header"]:
                table["rows"].append(self.row)
            else:
                table["header"] = self.row
        elif tag == "caption":
            self.tables[-1]["caption"] = self.text
        elif tag == "p":
            self.tables[-1]["notes"].append(self.text)
        if tag in ("th", "td", "caption", "p"):
            self.text = None


def parse(html):
    return Tables(html).tables


def test_table_escapes_every_cell_and_note():
    html = tables.table(["a<b", "c"], [["<script>", 1.5], ["&", None]], caption="x <i>y</i>",
                        notes=["1 < 2", "<b>last</b>"])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<i>" not in html and "<b>" not in html             # caption and notes too
    [table] = parse(html)
    assert table == {"caption": "x <i>y</i>", "header": ["a<b", "c"],
                     "rows": [["<script>", "1.5"], ["&", "None"]],
                     "notes": ["1 < 2", "<b>last</b>"]}


def test_sequential_shows_its_layers_parameters_and_total():
    model = mf.MLP([784, 512, 256, 10], seed=0)
    [table] = parse(model._repr_html_())
    assert table["caption"] == "MLP"
    assert table["header"] == ["#", "layer", "parameters", "count"]
    assert [row[1] for row in table["rows"]] == [repr(layer) for layer in model.layers]
    assert table["rows"][0] == ["0", "Linear(in_features=784, out_features=512, bias=True)",
                                "weight (512, 784), bias (512,)", "401,920"]
    assert table["rows"][1] == ["1", "ReLU()", "", "0"]
    assert [row[3] for row in table["rows"]] == ["401,920", "0", "131,328", "0", "2,570"]
    assert table["notes"] == ["Total params: 535,818 (float32, backend "
                              f"{model.backend.name})"]


def test_summary_html_has_the_printed_rows_and_totals():
    result = mf.summary(mf.MLP([5, 3, 2], activation="tanh", dtype=np.float64, seed=0), 5,
                        batch_size=7, show=False)
    [table] = parse(result._repr_html_())
    assert table["header"] == ["Layer (type)", "Output shape", "Params", "FLOPs/sample",
                               "Activations"]
    assert table["rows"] == [["0: Linear", "(N, 3)", "18", "33", "24 B"],
                             ["1: Tanh", "(N, 3)", "0", "3", "24 B"],
                             ["2: Linear", "(N, 2)", "8", "14", "16 B"]]
    assert "Total params: 26" in table["notes"]
    assert "For a batch of 7: 350 FLOPs, activations 448 B, input 280 B" in table["notes"]
    text = str(result)
    for note in table["notes"]:                      # the same totals as the printed table
        assert note in text


def test_history_html_has_a_row_per_epoch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = mf.MLP([3, 4, 2], seed=0)
    history = mf.fit(model, mf.optim.Adam(model.parameters(), lr=0.01), mf.CrossEntropyLoss(),
                     x, y, epochs=3, batch_size=8, val=(x, y), seed=0, progress=False)
    [table] = parse(history._repr_html_())
    assert table["caption"] == "History (3 epochs)"
    assert parse(tables.history_html(history.epochs[:1]))[0]["caption"] == "History (1 epoch)"
    assert table["header"][:3] == ["epoch", "loss", "train accuracy (%)"]
    assert "val accuracy (%)" in table["header"] and "samples per s" in table["header"]
    column = {name: i for i, name in enumerate(table["header"])}
    for row, record in zip(table["rows"], history.epochs):
        assert row[column["epoch"]] == str(record["epoch"])
        assert row[column["loss"]] == f"{record['loss']:.4g}"
        assert row[column["val accuracy (%)"]] == f"{100 * record['val_accuracy']:.2f}"
        assert row[column["samples per s"]] == f"{record['samples_per_s']:,.0f}"
    assert len(table["rows"]) == 3


def test_history_columns_are_every_key_any_record_has():
    [table] = parse(tables.history_html([{"epoch": 1, "loss": 0.5},
                                         {"epoch": 2, "loss": 0.25, "val_loss": 0.75}]))
    assert table["header"] == ["epoch", "loss", "val loss"]
    assert table["rows"] == [["1", "0.5", ""], ["2", "0.25", "0.75"]]


def test_evaluate_is_a_dict_shown_with_its_confusion_matrix():
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 1, 0])
    model = mf.Sequential(mf.Linear(2, 2, seed=0))
    model.load_state_dict({"0.weight": np.array([[1, 0], [0, 1]], np.float32),
                           "0.bias": np.zeros(2, np.float32)})      # predicts argmax(x)
    result = mf.evaluate(model, x, y)
    assert isinstance(result, dict) and set(result) == {"loss", "accuracy", "n",
                                                        "confusion_matrix", "scores"}
    assert result["accuracy"] == 0.8 and result["n"] == 5
    summary, scores, matrix = parse(result._repr_html_())
    assert summary["header"] == ["loss", "accuracy (%)", "n"]
    assert summary["rows"] == [[f"{result['loss']:.4g}", "80.00", "5"]]
    assert scores["header"] == ["class", "precision", "recall", "f1", "support"]
    assert scores["rows"][:2] == [["0", "0.6667", "1.0000", "0.8000", "2"],    # 2 of 3
                                  ["1", "1.0000", "0.6667", "0.8000", "3"]]    # predicted 0
    assert scores["rows"][2] == ["macro avg", "0.8333", "0.8333", "0.8000", "5"]
    # weighted by support (2, 3): precision (2 * 2/3 + 3 * 1) / 5, recall (2 * 1 + 3 * 2/3) / 5
    assert scores["rows"][3] == ["weighted avg", "0.8667", "0.8000", "0.8000", "5"]
    assert len(scores["rows"]) == 4
    assert matrix["header"] == ["true \\ predicted", "0", "1"]
    assert matrix["rows"] == [["0", "2", "0"], ["1", "1", "2"]]   # (1, 1) ties go to class 0
    no_matrix = mf.evaluate(model, x, y, confusion=False)
    assert len(parse(no_matrix._repr_html_())) == 1


def test_progress_takes_tqdm_auto(monkeypatch):
    made = []

    class Bar:
        def __init__(self, **kwargs):
            made.append(kwargs)
            self.n = 0

        def update(self, steps):
            self.n += steps

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            made.append(("closed", self.n))

    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=Bar))
    with Progress(True, 10, "epoch 1/1") as bar:
        bar.update(4, 0.5)
        bar.update(6, 0.25)
    assert made == [{"total": 10, "desc": "epoch 1/1", "unit": "step", "leave": False},
                    ("closed", 10)]


def terminal(text):
    """What a terminal shows after ``text``: each \\r returns to the line's start and
    overwrites it in place; the visible line, trailing blanks dropped."""
    line = []
    for part_index, part in enumerate(text.split("\r")):
        if part_index:
            position = 0
        else:
            position = len(line)
        for ch in part:
            if position < len(line):
                line[position] = ch
            else:
                line.append(ch)
            position += 1
    return "".join(line).rstrip()


def test_progress_without_tqdm_draws_a_text_bar_and_clears_it(monkeypatch, capsys):
    """Without tqdm: "\\r<desc> [30 cells of # and .] done/total loss L" on stderr, at most
    every 0.25 s but always at the last step; cleared when the epoch ends; nothing when
    disabled."""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)            # import fails
    clock = iter([10.0, 10.1, 10.2, 10.3])
    monkeypatch.setattr("mlpfast.progress.time.perf_counter", lambda: next(clock))
    with Progress(True, 1000, "epoch 12/30") as bar:
        bar.update(100, 2.0)                      # drawn (the first)
        first = capsys.readouterr().err
        bar.update(233, 1.5)                      # 0.1 s later: not drawn
        assert capsys.readouterr().err == ""
        bar.update(0, 9.0)                        # no steps: nothing
        bar.update(667, 0.123456)                 # the last step: drawn however soon
        last = capsys.readouterr().err
    cleared = capsys.readouterr().err
    assert terminal(first) == "epoch 12/30 [###...........................] 100/1000 loss 2.0000"
    assert terminal(last) == "epoch 12/30 [##############################] 1000/1000 loss 0.1235"
    assert terminal(first + last + cleared) == ""           # no trace of the bar is left
    with Progress(False, 10, "epoch 1/1") as bar:
        bar.update(10, 1.0)
    assert capsys.readouterr().err == ""

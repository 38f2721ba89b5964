"""examples/your_first_mlp.ipynb runs top to bottom, headless, in its quick mode
(MLPFAST_NOTEBOOK_QUICK=1), each section prints what its lesson shows, and it leaves no
temporary files; it is stored without outputs; without festival its speech section builds
the tone corpus instead.

Needs the ``notebook`` extra (nbclient, nbformat, ipykernel, ...): skipped without it,
except in CI (CI=true), where a missing extra is a failure."""
import importlib.util
import json
import os
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "examples" / "your_first_mlp.ipynb"
JUPYTER = ("nbclient", "nbformat", "ipykernel")
MISSING = [name for name in JUPYTER if importlib.util.find_spec(name) is None]

# what each section must print (the quick mode's data and epochs)
EXPECTED = [
    "quick mode: True",
    "AND: converged True", "OR: converged True", "XOR: converged False after 100 epochs",
    "3 perceptrons: weights (3, 2), biases (3,); accuracy 100.0%",
    "MLP 2-2-2 100.0%",
    "gradient descent diverges for lr >", "loss after 3000 epochs:",
    "gradients agree: largest difference",
    "device: ", "train (6000, 784) float32", "after one epoch: test accuracy",
    "weighted avg", "corpus: ", "held-out frame accuracy",
]


def jupyter():
    """nbclient and nbformat, or a skip (a failure in CI) naming what is missing."""
    if MISSING:
        message = f"the notebook extra is not installed (missing {', '.join(MISSING)}): " \
                  f"pip install -e '.[notebook]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    import nbclient
    import nbformat
    return nbclient, nbformat


def execute(cells_of, tmp_path, monkeypatch):
    """Run the notebook's cells ``cells_of(nb)`` picks in a fresh kernel from examples/;
    returns the executed notebook (nbclient raises CellExecutionError on any error). The
    kernel's temporary folders must be gone once it has ended."""
    nbclient, nbformat = jupyter()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = cells_of(nb)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")     # to read when it fails
    assert not any(scratch.iterdir()), f"the notebook left {sorted(scratch.rglob('*'))[:5]}"
    return nb


def text_of(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_notebook_runs_in_quick_mode(monkeypatch, tmp_path):
    from mlpfast.data.mnist import fetch
    try:
        fetch()
    except RuntimeError as e:
        pytest.skip(f"MNIST is not available here: {e}")
    monkeypatch.setenv("MLPFAST_NOTEBOOK_QUICK", "1")
    nb = execute(lambda nb: nb.cells, tmp_path, monkeypatch)
    printed = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    missing = [line for line in EXPECTED if line not in printed]
    assert not missing, f"the executed notebook did not print {missing}:\n{printed}"
    fit = next(c for c in nb.cells if "mnist-fit" in c.metadata.get("tags", []))
    kinds = [kind for o in fit.outputs for kind in o.get("data", {})]
    assert "text/html" in kinds                          # the History as a table
    if importlib.util.find_spec("ipywidgets") is not None:   # tqdm's notebook form
        assert "application/vnd.jupyter.widget-view+json" in kinds


def test_speech_section_without_festival_uses_the_tone_corpus(monkeypatch, tmp_path):
    """The setup and speech cells alone, with no festival on PATH."""
    def setup_and_speech(nb):
        return [c for c in nb.cells
                if {"setup", "speech"} & set(c.metadata.get("tags", []))]

    monkeypatch.setenv("MLPFAST_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PATH", str(tmp_path))             # nothing to run there
    nb = execute(setup_and_speech, tmp_path, monkeypatch)
    printed = "".join(text_of(c) for c in nb.cells)
    assert "corpus: tones built like the test fixtures (tests/test_speech.py), 16 " \
           "utterances; festival is not installed" in printed
    assert "held-out frame accuracy" in printed

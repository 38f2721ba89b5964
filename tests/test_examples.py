"""Every script in examples/ runs to the end (with --plots when it takes it and matplotlib is
installed), prints what its lesson is about and leaves no temporary files behind."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

# lines each lesson must print; scripts not listed here only have to exit with 0
EXPECTED = {
    "perceptron_separable.py": ["converged: True", "training accuracy: 100.0%"],
    "perceptron_xor.py": ["converged: False after 100 epochs"],
    "mlp_xor.py": ["xor: perceptron", "(converged: False), MLP 2-8-2 100.0%",
                   "moons: perceptron", "MLP 2-16-2 100.0%"],
    "mnist_api.py": ["Total params: 101,770", "epoch 2/2", "test accuracy:"],
}
NEEDS_MNIST = {"mnist_api.py"}


def test_the_course_examples_are_there():
    assert set(EXPECTED) <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    if script in NEEDS_MNIST:
        from mlpfast.data.mnist import fetch
        try:
            fetch()
        except RuntimeError as e:
            pytest.skip(f"MNIST is not available here: {e}")
    path = EXAMPLES / script
    command = [sys.executable, str(path)]
    takes_plots = "--plots" in path.read_text()
    if takes_plots and HAS_MATPLOTLIB:
        command += ["--plots", str(tmp_path)]
    scratch = tmp_path / "tmp"                          # the script's temporary folders
    scratch.mkdir()
    env = dict(os.environ, MPLBACKEND="Agg", TMPDIR=str(scratch))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert not any(scratch.iterdir()), f"{script} left {sorted(scratch.rglob('*'))[:5]}"
    for line in EXPECTED.get(script, []):
        assert line in done.stdout, f"{script} did not print {line!r}:\n{done.stdout}"
    if takes_plots and HAS_MATPLOTLIB:
        pictures = sorted(p.name for p in tmp_path.glob("*.png"))
        assert pictures, f"{script} --plots wrote no PNG into {tmp_path}"
        for name in pictures:
            assert f"wrote {tmp_path / name}" in done.stdout


SCRIPTS_WITH_HELP = sorted(p for folder in (EXAMPLES, EXAMPLES.parent / "bench")
                           for p in folder.glob("*.py")
                           if "ArgumentParser(description=__doc__" in p.read_text())


@pytest.mark.parametrize("path", SCRIPTS_WITH_HELP, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help_description_is_a_whole_sentence(path):
    """The scripts' --help shows their docstring's opening as the description: the first
    paragraph, not its first line, which ended mid-sentence ('... 10 classes out: the')."""
    import ast
    tree = ast.parse(path.read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "ArgumentParser")
    expression = next(k.value for k in call.keywords if k.arg == "description")
    description = eval(compile(ast.Expression(expression), str(path), "eval"),
                       {"__doc__": ast.get_docstring(tree, clean=False)})
    assert description.rstrip().endswith("."), f"{path.name}: {description!r}"

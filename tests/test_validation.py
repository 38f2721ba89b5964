"""Bad input at every public entry point: a ValueError/TypeError naming the problem, raised
before any state changes (parameters, optimizer state and step count compared bit for bit);
unusual but valid input (read-only, non-contiguous, other dtypes) works and gives the
same result as a clean copy; ``out=`` arguments that alias inputs are rejected or correct."""
import gzip

import numpy as np
import pytest

import mlpfast as mf
from mlpfast.data.mnist import IDXError, parse_idx, read_idx

BACKENDS = mf.backends()


def _snapshot(model, opt):
    state = opt.state_dict()
    return mf.to_numpy(model.flat_data).copy(), state


def _assert_unchanged(model, opt, snapshot):
    params, state = snapshot
    assert np.array_equal(mf.to_numpy(model.flat_data), params)
    now = opt.state_dict()
    assert now["step"] == state["step"] and now["hyper"] == state["hyper"]
    for name, a in state["state"].items():
        assert np.array_equal(now["state"][name], a)


@pytest.fixture
def trained(rng):
    """A 784-16-10 model and Adam after one epoch (non-zero moments), and its data."""
    model = mf.MLP([784, 16, 10], backend="numpy", seed=0)
    opt = mf.optim.Adam(model.parameters())
    x = rng.random((20, 784)).astype(np.float32)
    y = rng.integers(0, 10, 20)
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=8, progress=False)
    return model, opt, x, y


def _fit(model, opt, x, y, **kwargs):
    return mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=8,
                  progress=False, **kwargs)


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


# --- the foundation issue's seven cases: message names the problem, nothing changes ----

def case_783_columns(model, opt, x, y, tmp_path):
    _fit(model, opt, x[:, :783], y)


def case_label_10(model, opt, x, y, tmp_path):
    y = y.copy()
    y[3] = 10
    _fit(model, opt, x, y)


def case_nan_in_x(model, opt, x, y, tmp_path):
    x = x.copy()
    x[5, 100] = np.nan
    _fit(model, opt, x, y)


def case_x_beyond_float32(model, opt, x, y, tmp_path):
    x = x.astype(np.float64)                  # finite here, inf in the float32 model
    x[5, 100] = -1e39
    _fit(model, opt, x, y)


def case_empty_x(model, opt, x, y, tmp_path):
    _fit(model, opt, x[:0], y[:0])


def case_length_mismatch(model, opt, x, y, tmp_path):
    _fit(model, opt, x, y[:19])


def case_truncated_idx(model, opt, x, y, tmp_path):
    images = (x.reshape(20, 28, 28) * 255).astype(np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(images)[:-100])             # the download stopped early
    _fit(model, opt, read_idx(path).reshape(20, 784) / 255.0, y)


def case_npz_not_a_model(model, opt, x, y, tmp_path):
    np.savez(tmp_path / "weights.npz", w=np.zeros(3))
    mf.load(tmp_path / "weights.npz")


def case_npz_not_a_checkpoint(model, opt, x, y, tmp_path):
    np.savez(tmp_path / "weights.npz", w=np.zeros(3))
    _fit(model, opt, x, y, resume=tmp_path / "weights.npz")


@pytest.mark.parametrize("case,message", [
    (case_783_columns, "x has 783 columns but the model expects 784 input features"),
    (case_label_10, r"y must lie in \[0, 10\) for 10 classes, found 10"),
    (case_nan_in_x, r"x contains NaN or inf \(first at row 5\)"),
    (case_x_beyond_float32, r"x holds values beyond the range of the model's float32 "
                            r"\(\|x\| <= 3.403e\+38\), first at row 5"),
    (case_empty_x, r"x is empty \(shape \(0, 784\)\)"),
    (case_length_mismatch, r"len\(x\) = 20 but len\(y\) = 19"),
    (case_truncated_idx, r"train-images-idx3-ubyte: 15596 bytes but its header \(20, 28, 28\) "
                         r"of uint8 needs 15696 \(truncated"),
    (case_npz_not_a_model, "weights.npz is not a saved mlpfast model"),
    (case_npz_not_a_checkpoint, "weights.npz is not an mlpfast checkpoint"),
], ids=lambda v: v.__name__[5:] if callable(v) else "")
def test_bad_input_is_named_and_changes_nothing(case, message, trained, tmp_path):
    model, opt, x, y = trained
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=message):
        case(model, opt, x, y, tmp_path)
    _assert_unchanged(model, opt, before)


# --- more of fit's arguments ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(epochs=0), ValueError, "epochs must be a positive integer, got 0"),
    (dict(batch_size=2.5), ValueError, "batch_size must be a positive integer, got 2.5"),
    (dict(y=np.array(["cat"] * 20)), TypeError, "y must be integer labels"),
    (dict(y=np.zeros((20, 1), np.int64)), TypeError, r"got int64 of shape \(20, 1\)"),
    (dict(y=np.full(20, 0.5)), TypeError, "float values .* CrossEntropyLoss needs integer"),
    (dict(y=np.full(20, -1)), ValueError, r"must lie in \[0, 10\).*found -1"),
    (dict(x=np.zeros((20, 784), complex)), TypeError, "x must hold numbers, got dtype complex"),
    (dict(x=np.zeros((20, 28, 28))), ValueError, r"x must be 2-D \(samples, features\)"),
    (dict(val=(np.zeros((3, 784)),)), ValueError, r"val must be \(x_val, y_val\)"),
    (dict(val=(np.zeros((3, 783)), np.zeros(3, int))), ValueError, "val x has 783 columns"),
    (dict(val=(np.zeros((3, 784)), np.array([0, 1, 12]))), ValueError, "found 12"),
    (dict(seed="abc"), TypeError, "seed must be None, an integer >= 0 or a numpy Generator, "
                                  "got 'abc'"),
    (dict(seed=-1), ValueError, "seed must be None, an integer >= 0"),
    (dict(val=(np.zeros((3, 784)), np.array([0, 1, 13]))), ValueError,
     r"val y must lie in \[0, 10\) for 10 classes, found 13"),
    (dict(loss_fn=None), TypeError, "loss_fn must be CrossEntropyLoss"),
])
def test_fit_argument_errors_change_nothing(kwargs, error, message, trained):
    model, opt, x, y = trained
    before = _snapshot(model, opt)
    args = dict(x=x, y=y, loss_fn=mf.CrossEntropyLoss(), epochs=1, batch_size=8)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        mf.fit(model, opt, args.pop("loss_fn"), args.pop("x"), args.pop("y"), progress=False,
               **args)
    _assert_unchanged(model, opt, before)


def test_optimizer_of_another_model_is_refused(trained):
    model, opt, x, y = trained
    other = mf.MLP([784, 16, 10], backend="numpy", seed=1)
    before, before_other = _snapshot(model, opt), other.flat_data.copy()
    with pytest.raises(ValueError, match="optimizer was built for another model's parameters"):
        _fit(other, opt, x, y)
    _assert_unchanged(model, opt, before)
    assert np.array_equal(other.flat_data, before_other)


def test_a_bare_layer_is_refused_with_the_way_to_train_it(rng):
    layer = mf.Linear(5, 3, backend="numpy", seed=0)
    before = layer.weight.data.copy()
    with pytest.raises(TypeError, match=r"model must be a Sequential or an MLP \(a layer "
                                        r"trains as mf.Sequential\(layer\)\), got Linear"):
        mf.fit(layer, mf.optim.SGD(layer.parameters(), lr=0.1), mf.CrossEntropyLoss(),
               rng.normal(size=(8, 5)), np.arange(8) % 3, epochs=1, batch_size=4,
               progress=False)
    assert np.array_equal(layer.weight.data, before)


def test_mse_targets_must_match_the_outputs(rng):
    model = mf.MLP([5, 4, 3], backend="numpy", seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    x = rng.normal(size=(8, 5))
    with pytest.raises(ValueError, match=r"y must have shape \(8, 3\) .* got \(8, 2\)"):
        mf.fit(model, opt, mf.MSELoss(), x, rng.normal(size=(8, 2)), epochs=1, batch_size=4,
               progress=False)
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        mf.fit(model, opt, mf.MSELoss(), x, np.full((8, 3), np.inf), epochs=1, batch_size=4,
               progress=False)
    assert opt.step_count == 0


# --- inference and construction ------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda m, x: m(x),
    lambda m, x: mf.predict(m, x),
    lambda m, x: mf.predict_proba(m, x),
    lambda m, x: mf.evaluate(m, x, np.zeros(len(x), np.int64)),
])
def test_inference_entry_points_check_x(call):
    model = mf.MLP([4, 3, 2], backend="numpy", seed=0)
    before = model.flat_data.copy()
    for bad, message in ((np.zeros((2, 5)), "x has 5 columns but the model expects 4"),
                         (np.full((2, 4), np.inf), "x contains NaN or inf"),
                         (np.full((2, 4), 1e39), "x holds values beyond the range of the "
                                                 "model's float32"),
                         (np.zeros((0, 4)), "x is empty"),
                         (np.zeros(4), "2-D")):
        with pytest.raises(ValueError, match=message):
            call(model, bad)
    with pytest.raises(TypeError, match="must hold numbers"):
        call(model, np.array([["a"] * 4]))
    assert np.array_equal(model.flat_data, before)


def test_evaluate_checks_labels():
    model = mf.MLP([4, 3, 2], backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\) for 2 classes, found 2"):
        mf.evaluate(model, np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"len\(x\) = 3 but len\(y\) = 2"):
        mf.evaluate(model, np.zeros((3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        mf.predict(model, np.zeros((3, 4)), batch_size=0)


def test_load_state_dict_refuses_nan_and_ints_before_copying():
    model = mf.MLP([3, 2], backend="numpy", seed=0)
    before = model.flat_data.copy()
    state = model.state_dict()
    state["0.bias"] = np.array([0.0, np.nan])
    with pytest.raises(ValueError, match="0.bias contains NaN or inf"):
        model.load_state_dict(state)
    state["0.bias"] = np.array([1, 2])
    with pytest.raises(TypeError, match="0.bias must be a float array"):
        model.load_state_dict(state)
    assert np.array_equal(model.flat_data, before)


def test_idx_parser_names_each_problem():
    good = _idx_bytes(np.arange(12).reshape(3, 4))
    assert np.array_equal(parse_idx(good), np.arange(12).reshape(3, 4))
    assert np.array_equal(parse_idx(gzip.compress(good)), np.arange(12).reshape(3, 4))
    for data, message in ((good[:3], "too short"), (b"\x01" + good[1:], "bad IDX magic"),
                          (good[:2] + b"\x07" + good[3:], "unknown IDX element type 0x07"),
                          (good[:3] + b"\x00" + good[4:], "declares 0 dimensions"),
                          (good[:6], "truncated header"), (good + b"\x00", "trailing data"),
                          (gzip.compress(good)[:-9], "corrupt gzip stream"),
                          (bytes([0, 0, 8, 4]) + b"\xff" * 16, "needs 340282366604025813516997721482669850645 "),
                          (bytes([0, 0, 8, 3, 0, 0, 0, 0]) + b"\xff" * 8, "is too large")):
        with pytest.raises(IDXError, match=message):
            parse_idx(data, name="f")


# --- unusual but valid arrays: same result as a clean copy -----------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_non_contiguous_and_integer_inputs_train_like_clean_copies(backend, rng):
    base = rng.normal(size=(30, 12))
    y = rng.integers(0, 3, 30)
    clean = np.ascontiguousarray(base[:, ::2], dtype=np.float32)
    variants = {"clean": clean,
                "strided": np.repeat(clean, 2, axis=1)[:, ::2],      # same values, stride 2
                "fortran": np.asfortranarray(clean),
                "read_only": clean.copy(),
                "float64": clean.astype(np.float64)}                 # cast to the model dtype
    variants["read_only"].flags.writeable = False
    y_read_only = y.copy()
    y_read_only.flags.writeable = False
    results = {}
    for name, x in variants.items():
        model = mf.MLP([6, 5, 3], backend=backend, seed=0)
        opt = mf.optim.Adam(model.parameters())
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y_read_only if name == "read_only" else y,
               epochs=2, batch_size=7, seed=0, progress=False)
        results[name] = (mf.to_numpy(model.flat_data).copy(), mf.predict_proba(model, x))
    for name, (params, proba) in results.items():
        assert np.array_equal(params, results["clean"][0]), name
        assert np.array_equal(proba, results["clean"][1]), name


# --- out= aliasing in the backends' ops ---------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_aliasing_an_input_is_rejected_or_correct(backend, dtype, rng):
    be = mf.get_backend(backend)
    if be.device != "cpu":
        pytest.skip("host arrays only")
    a = rng.normal(size=(6, 6)).astype(dtype)
    w = rng.normal(size=(6, 6)).astype(dtype)
    b = rng.normal(size=6).astype(dtype)
    for call in (lambda: be.gemm(a, w, a), lambda: be.gemm(a, w, w),
                 lambda: be.gemm(a, w, a[:, :], trans_b=True),
                 lambda: be.linear_forward(a, w, b, "identity", a),
                 lambda: be.linear_forward(a, w, b, "identity", w)):
        saved = a.copy(), w.copy()
        with pytest.raises(ValueError, match="must not overlap"):
            call()
        assert np.array_equal(a, saved[0]) and np.array_equal(w, saved[1])
    for name, act in be.activations.items():     # documented: out may be x (fwd), grad_y (bwd)
        x = rng.normal(size=(5, 7)).astype(dtype)
        y = act.forward(x.copy())
        expected_dx = act.backward(np.ones_like(x), x, y)
        in_place = x.copy()
        assert np.array_equal(act.forward(in_place, in_place), y), name
        grad = np.ones_like(x)
        assert np.array_equal(act.backward(grad, x, y, grad), expected_dx), name


# --- optimizer state and step rates: checked before anything changes ---------------------------

def _sgd_state(model, **kwargs):
    opt = mf.optim.SGD(model.parameters(), lr=0.1, **kwargs)
    model.flat_grad[...] = 1.0
    opt.step()
    return opt.state_dict()


@pytest.mark.parametrize("edit,error,message", [
    (lambda s: s["hyper"].update(lr=-5), ValueError, r"state\['hyper'\].*lr must be >= 0"),
    (lambda s: s["hyper"].update(foo=1), TypeError, r"state\['hyper'\].*'foo'"),
    (lambda s: s["hyper"].pop("weight_decay"), ValueError, r"state\['hyper'\] has"),
    (lambda s: s["hyper"].update(lr="0.1"), TypeError,
     r"state\['hyper'\].*lr must be a number, got '0.1'"),
    (lambda s: s["hyper"].update(nesterov=1), TypeError,
     r"state\['hyper'\].*nesterov must be True or False, got 1"),
    (lambda s: s["state"]["momentum_buffer"].__setitem__(3, np.nan), ValueError,
     "'momentum_buffer' contains NaN or inf"),
    (lambda s: s["state"].update(momentum_buffer=np.zeros(5)), ValueError,
     r"'momentum_buffer' must be a float array of shape \(17,\)"),
    (lambda s: s["hyper"].update(momentum=0.0), ValueError,
     r"holds \['momentum_buffer'\], but SGD with .* keeps \[\]"),
    (lambda s: s.pop("state"), ValueError, r"state lacks \['state'\]"),
    (lambda s: s.update(step="x"), ValueError, r"state\['step'\] must be an integer >= 0, "
                                               r"got 'x'"),
    (lambda s: s.update(step=-1), ValueError, r"state\['step'\] must be an integer >= 0"),
])
def test_optimizer_load_state_dict_checks_everything_before_changing(edit, error, message):
    model = mf.MLP([3, 2, 3], backend="numpy", seed=0)
    state = _sgd_state(model, momentum=0.9)
    edit(state)
    opt = mf.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    model.flat_grad[...] = 2.0
    opt.step()
    before = _snapshot(model, opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(state)
    _assert_unchanged(model, opt, before)
    assert opt.state_names == ("momentum_buffer",)


@pytest.mark.parametrize("lr,error", [(-1, ValueError), (float("nan"), ValueError),
                                      (float("inf"), ValueError), ("x", TypeError)])
@pytest.mark.parametrize("make", [lambda ps: mf.optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: mf.optim.Adam(ps)])
def test_step_refuses_a_bad_rate_before_updating(lr, error, make):
    model = mf.MLP([3, 2, 3], backend="numpy", seed=0)
    opt = make(model.parameters())
    model.flat_grad[...] = 1.0
    before = _snapshot(model, opt)
    with pytest.raises(error, match="lr must be"):
        opt.step(lr=lr)
    _assert_unchanged(model, opt, before)
    opt.step(lr=0.0)
    assert opt.step_count == 1


# --- bool and float16 samples: converted once, trained like float32 ---------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_bool_and_float16_x_train_like_their_float32_values(backend, rng):
    y = rng.integers(0, 2, 20)
    base = rng.normal(size=(20, 3))
    for x in (base > 0, base.astype(np.float16)):
        results = []
        for data in (x, x.astype(np.float32)):
            model = mf.MLP([3, 4, 2], backend=backend, seed=0)
            opt = mf.optim.SGD(model.parameters(), lr=0.5)
            history = mf.fit(model, opt, mf.CrossEntropyLoss(), data, y, epochs=2,
                             batch_size=8, seed=0, progress=False)
            results.append((mf.to_numpy(model.flat_data).copy(), history["loss"]))
        assert np.array_equal(results[0][0], results[1][0]), x.dtype
        assert results[0][1] == results[1][1] and results[0][1][0] > 0


# --- error messages name the argument ---------------------------------------------------------

@pytest.mark.parametrize("call,error,message", [
    (lambda: mf.MLP([3, 4, 2], dropout=2), ValueError, "dropout must be a probability"),
    (lambda: mf.MLP([3, 4, 2], input_dropout=-1), ValueError,
     "input_dropout must be a probability"),
    (lambda: mf.MLP([3, 0, 2]), ValueError, r"sizes must be positive integers, got \[3, 0, 2\]"),
    (lambda: mf.MLP([3, 2], seed="a"), TypeError, "seed must be None, an integer >= 0"),
    (lambda: mf.Linear(3, 2, seed=-2), ValueError, "seed must be None, an integer >= 0"),
    (lambda: mf.evaluate(mf.MLP([3, 2], seed=0), np.zeros((2, 3))), ValueError,
     "y is missing: evaluate needs labels"),
    (lambda: mf.CrossEntropyLoss()([[1, 2]], [0]), TypeError,
     "logits must hold float32 or float64 values, got int64"),
    (lambda: mf.MSELoss()([1.0, 2.0], [1.0, 2.0]), ValueError,
     r"pred must be 2-D \(batch, outputs\), got shape \(2,\)"),
    # a negative label would index the last class (NumPy's wrap-around) in the kernels
    (lambda: mf.CrossEntropyLoss(backend="numpy")(np.zeros((2, 3)), [0, -1]), ValueError,
     r"labels must lie in \[0, 3\) for 3 classes, found -1"),
    (lambda: mf.CrossEntropyLoss(backend="numpy").value(np.zeros((2, 3)), [-2, 0]), ValueError,
     r"labels must lie in \[0, 3\) for 3 classes, found -2"),
    (lambda: mf.MSELoss(backend="numpy")(np.zeros((2, 3)), [0, -1]), ValueError,
     r"target must lie in \[0, 3\) for 3 classes, found -1"),
    # torch.optim.Adam's range, 0 <= beta < 1: beta2 = 1 never updates exp_avg_sq, and its
    # bias correction 1 - beta2^t divides by zero
    (lambda: mf.optim.Adam(mf.MLP([3, 2], seed=0).parameters(), betas=(0.9, 1.0)), ValueError,
     r"betas\[1\] must be >= 0.0 and < 1.0, got 1.0"),
    (lambda: mf.optim.AdamW(mf.MLP([3, 2], seed=0).parameters(), betas=(1.0, 0.999)),
     ValueError, r"betas\[0\] must be >= 0.0 and < 1.0, got 1.0"),
    # a hyperparameter is a number or a flag, never text that float() or bool() would take
    (lambda: mf.optim.SGD(mf.MLP([3, 2], seed=0).parameters(), lr="0.1"), TypeError,
     "lr must be a number, got '0.1'"),
    (lambda: mf.optim.Adam(mf.MLP([3, 2], seed=0).parameters(), eps=True), TypeError,
     "eps must be a number, got True"),
    (lambda: mf.optim.SGD(mf.MLP([3, 2], seed=0).parameters(), lr=0.1, momentum=0.9,
                          nesterov="no"), TypeError, "nesterov must be True or False, got 'no'"),
])
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_losses_take_array_likes():
    logits, labels = [[1.0, 2.0], [0.5, -1.0]], [0, 0]
    expected = mf.CrossEntropyLoss(backend="numpy")(np.array(logits), np.array(labels))
    assert mf.CrossEntropyLoss(backend="numpy")(logits, labels) == expected
    assert expected == pytest.approx(np.mean([np.log1p(np.exp(1.0)), np.log1p(np.exp(-1.5))]))
    assert mf.MSELoss(backend="numpy")([[1.0, 2.0]], [[0.0, 0.0]]) == pytest.approx(2.5)

"""Fuzzing (hypothesis): parsers, loaders and kernel argument checks fed random and mutated
input give a clean error (ValueError/TypeError) or a correct result, never a crash, a hang
or a half-applied change. A kernel variant gives the reference's result, or refuses what the
reference refuses (or an out= overlapping an input); refusing valid input is a failure.

Examples per target: MLPFAST_FUZZ_EXAMPLES (default 150; CI runs the default). Each example
must finish within a 60 s deadline (room for Numba compiling a new signature), which turns
a hang into a failure.
"""
import datetime
import gzip
import io
import json
import os
import tempfile
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mlpfast as mf  # noqa: E402
from mlpfast import env  # noqa: E402
from mlpfast.checkpoint import META_ENTRY, read_checkpoint  # noqa: E402
from mlpfast.data.mnist import IDX_TYPES, IDXError, parse_idx  # noqa: E402
from mlpfast.data.speech import parse_phn  # noqa: E402
from mlpfast.kernels import activations, data, gemm, linear, losses, optim  # noqa: E402

EXAMPLES = env.fuzz_examples()
# CI (CI=true) draws the same examples every run, so a red CI is reproducible, not luck.
FUZZ = settings(max_examples=EXAMPLES, deadline=datetime.timedelta(seconds=60), database=None,
                derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
CLEAN = (ValueError, TypeError)


# --- byte mutations ---------------------------------------------------------------------------

@st.composite
def mutated(draw, original):
    """``original`` bytes with a few bytes flipped, a cut, or bytes inserted."""
    data = bytearray(original)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "flip+truncate"]))
    if "flip" in kind:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    if "truncate" in kind:
        data = data[:draw(st.integers(0, len(data)))]
    if kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


# --- IDX ---------------------------------------------------------------------------------------

def _idx_encode(array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.dtype(IDX_TYPES[type_code]).newbyteorder(">")).tobytes()


def _check_idx_result(data, result):
    """A parsed array re-encodes to exactly the bytes it came from."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    assert _idx_encode(result, raw[2]) == raw


@st.composite
def idx_files(draw):
    type_code = draw(st.sampled_from(sorted(IDX_TYPES)))
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    count = int(np.prod(shape))
    values = draw(st.binary(min_size=count * np.dtype(IDX_TYPES[type_code]).itemsize,
                            max_size=count * np.dtype(IDX_TYPES[type_code]).itemsize))
    header = bytes([0, 0, type_code, len(shape)]) + b"".join(s.to_bytes(4, "big")
                                                             for s in shape)
    data = header + values
    return gzip.compress(data) if draw(st.booleans()) else data


@FUZZ
@given(st.one_of(st.binary(max_size=64),
                 st.tuples(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x01, 0xFF]),
                           st.integers(0, 255), st.binary(max_size=40)).map(
                     lambda t: bytes([0, 0, t[0], t[1]]) + t[2])))
def test_fuzz_idx_random_bytes(data):
    try:
        result = parse_idx(data)
    except IDXError:
        return
    _check_idx_result(data, result)


@FUZZ
@given(idx_files().flatmap(lambda f: st.tuples(st.just(f), mutated(f))))
def test_fuzz_idx_mutated_files(pair):
    original, data = pair
    try:
        result = parse_idx(data)
    except IDXError:
        return
    _check_idx_result(data, result)


# --- .PHN ----------------------------------------------------------------------------------------

PHN_LINE = st.one_of(
    st.tuples(st.integers(-5, 60), st.integers(-5, 60), st.sampled_from(["h#", "aa", "sh", ""]))
    .map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.text(alphabet="0123456789 -\t.xe#", max_size=12))


@FUZZ
@given(st.one_of(st.lists(PHN_LINE, max_size=8).map("\n".join), st.text(max_size=60)),
       st.one_of(st.none(), st.integers(0, 60)))
def test_fuzz_phn(text, num_samples):
    try:
        segments = parse_phn(text, num_samples, source="f.PHN")
    except ValueError as e:
        assert "f.PHN" in str(e)
        return
    assert segments
    assert len(segments) == sum(1 for line in text.splitlines() if line.split())
    previous_end = 0
    for s in segments:
        assert previous_end <= s.start < s.end and s.phone
        assert num_samples is None or s.end <= num_samples
        previous_end = s.end


# --- model files ----------------------------------------------------------------------------------

def _saved_model_bytes():
    model = mf.MLP([5, 4, 3], activation="gelu_tanh", backend="numpy", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, "model.npz"))
        with open(os.path.join(tmp, "model.npz"), "rb") as f:
            return f.read(), model.state_dict()


MODEL_BYTES, MODEL_STATE = _saved_model_bytes()


@FUZZ
@given(mutated(MODEL_BYTES))
def test_fuzz_model_loader_mutated_files(tmp_path, data):
    path = tmp_path / "model.npz"
    path.write_bytes(data)
    try:
        model = mf.load(path, backend="numpy")
    except ValueError:
        return
    state = model.state_dict()                 # what loads is what was saved
    assert set(state) == set(MODEL_STATE)
    for name, a in MODEL_STATE.items():
        assert np.array_equal(state[name], a)


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**40), st.text(max_size=8),
                         st.floats(allow_nan=False))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
LAYER_CONFIGS = st.one_of(
    st.fixed_dictionaries({"type": st.just("Linear"),
                           "in_features": st.one_of(st.integers(-1, 6), st.just(2**40),
                                                    JSON_SCALARS),
                           "out_features": st.one_of(st.integers(-1, 6), st.just(2**36)),
                           "bias": st.one_of(st.booleans(), JSON_SCALARS)}),
    st.fixed_dictionaries({"type": st.sampled_from(["ReLU", "GELU", "LeakyReLU", "Softmax",
                                                    "Conv2d"])},
                          optional={"approximate": JSON_SCALARS,
                                    "negative_slope": JSON_SCALARS}),
    JSON_VALUES)


@FUZZ
@given(st.fixed_dictionaries({"format": st.sampled_from(["mlpfast.Sequential", "other"]),
                              "version": st.just(1),
                              "dtype": st.sampled_from(["float32", "float64", "int8", "x"]),
                              "layers": st.lists(LAYER_CONFIGS, max_size=4)}),
       st.dictionaries(st.sampled_from(["0.weight", "0.bias", "2.weight", "2.bias"]),
                       st.tuples(st.integers(0, 6), st.integers(1, 6)), max_size=4))
def test_fuzz_model_loader_metadata(tmp_path, meta, shapes):
    """Arbitrary architectures, including sizes of 2**40, against small weight arrays: a
    clean error, fast (sizes are checked against the arrays before anything is allocated)."""
    arrays = {name: np.ones(shape if name.endswith("weight") else shape[:1], np.float32)
              for name, shape in shapes.items()}
    arrays["__mlpfast__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", **arrays)
    try:
        model = mf.load(tmp_path / "m.npz", backend="numpy")
    except ValueError:
        return
    for name, a in model.state_dict().items():
        assert np.array_equal(a, arrays[name])


# --- checkpoints ----------------------------------------------------------------------------------

def _checkpoint_bytes(tmp_dir):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)).astype(np.float32), rng.integers(0, 3, 12)
    model = mf.MLP([5, 4, 3], backend="numpy", seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = os.path.join(tmp_dir, "c")
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=5, progress=False,
           checkpoint=path, checkpoint_every=4)          # mid-epoch: has an order entry
    with open(path, "rb") as f:
        return f.read(), (x, y)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    return _checkpoint_bytes(str(tmp_path_factory.mktemp("ckpt")))


def _resume_into_fresh_model(path, xy):
    model = mf.MLP([5, 4, 3], backend="numpy", seed=1)
    opt = mf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = model.flat_data.copy()
    try:
        mf.fit(model, opt, mf.CrossEntropyLoss(), *xy, epochs=3, batch_size=5,
               progress=False, resume=path)
    except ValueError:
        assert np.array_equal(model.flat_data, before) and opt.step_count == 0
        return False
    assert np.isfinite(model.flat_data).all()
    return True


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint_reader_mutated_files(tmp_path, checkpoint_file, data):
    original, xy = checkpoint_file
    blob = data.draw(mutated(original))
    path = tmp_path / "c"
    path.write_bytes(blob)
    try:
        ckpt = read_checkpoint(path)
    except ValueError:
        assert not _resume_into_fresh_model(path, xy)
        return
    reference = read_checkpoint_bytes(original, tmp_path)
    assert ckpt.meta == reference.meta         # what verifies is what was written
    for name, a in reference.arrays.items():
        assert np.array_equal(ckpt.arrays[name], a)


def read_checkpoint_bytes(blob, tmp_dir):
    path = tmp_dir / "reference"
    path.write_bytes(blob)
    return read_checkpoint(path)


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint_metadata_fields(tmp_path, checkpoint_file, data):
    """One metadata field replaced by an arbitrary JSON value (digests kept valid): reading
    and resuming give a clean ValueError that changes nothing, or a working resume."""
    original, xy = checkpoint_file
    with zipfile.ZipFile(io.BytesIO(original)) as zf:
        arrays = {n[:-4]: np.load(io.BytesIO(zf.read(n))) for n in zf.namelist()}
    meta = json.loads(bytes(arrays.pop(META_ENTRY)).decode())
    section = data.draw(st.sampled_from(["architecture", "optimizer", "data", "progress",
                                         "rng", "history", "loss"]))
    if isinstance(meta[section], dict) and meta[section] and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(meta[section])))
        meta[section][key] = data.draw(JSON_VALUES)
    else:
        meta[section] = data.draw(JSON_VALUES)
    arrays[META_ENTRY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "c", **arrays)
    path = tmp_path / "c.npz"
    try:
        read_checkpoint(path)
    except ValueError:
        return
    _resume_into_fresh_model(path, xy)


# --- kernel argument checks ---------------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.bool_]


@st.composite
def arrays(draw, shape, dtypes=(np.float32, np.float64), wrong=0.1):
    """An array of ``shape`` (sometimes a wrong one), maybe of another dtype, maybe a
    transposed, strided or read-only view."""
    if draw(st.floats(0, 1)) < wrong:
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(dtypes)) if draw(st.floats(0, 1)) > wrong else \
        draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    layout = draw(st.sampled_from(["c", "c", "f", "strided", "read_only"]))
    if layout == "strided" and len(shape) >= 1:
        a = rng.normal(size=shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    else:
        a = rng.normal(size=shape).astype(dtype)
        if layout == "f":
            a = np.asfortranarray(a)
    if layout == "read_only":
        a.flags.writeable = False
    return a


def _clone(a):
    """A copy of ``a`` that is read-only when ``a`` is (not a view of it, so no aliasing)."""
    if not isinstance(a, np.ndarray):
        return a
    copy = a.copy()
    copy.flags.writeable = a.flags.writeable
    return copy


def _overlapping(args):
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    return any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[:i])


def _call_and_check(variant_fn, reference_fn, args, kwargs, in_place=False):
    """Run ``variant_fn`` and ``reference_fn`` (on copies, which alias nothing). A clean
    error must leave every array argument unchanged and be one the reference gives too, or
    the refusal of an out= that overlaps an input (allowed unless ``in_place``: activations
    may write into their input); a result must match the reference's."""
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    ref_args = [_clone(a) for a in args]
    try:
        expected, accepted = reference_fn(*ref_args, **kwargs), True
    except CLEAN:
        expected, accepted = None, False
    try:
        result = variant_fn(*args, **kwargs)
    except CLEAN as error:
        for a, c in zip(args, copies):
            if isinstance(a, np.ndarray):
                assert np.array_equal(a, c, equal_nan=True), "changed before raising"
        refused_overlap = not in_place and _overlapping(args) and "overlap" in str(error)
        assert refused_overlap or not accepted, f"refused what the reference accepts: {error!r}"
        return
    if not accepted:         # the reference refuses: only an empty result is acceptable
        assert np.asarray(result[0] if isinstance(result, tuple) else result).size == 0
        return
    got, want = (result, expected) if not isinstance(result, tuple) else (result[0], expected[0])
    if got is None:            # in-place ops: compare the mutated arguments
        for a, e in zip(args, ref_args):
            if isinstance(a, np.ndarray):
                np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5)
        return
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64),
                               np.asarray(want, dtype=np.float64), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("variant", sorted(gemm.VARIANTS))
@FUZZ
@given(st.data())
def test_fuzz_gemm_arguments(variant, data):
    m, n, k = (data.draw(st.integers(0, 6)) for _ in range(3))
    trans_a, trans_b = data.draw(st.booleans()), data.draw(st.booleans())
    a = data.draw(arrays((k, m) if trans_a else (m, k)))
    b = data.draw(arrays((n, k) if trans_b else (k, n)))
    out_kind = data.draw(st.sampled_from(["none", "fresh", "fresh", "alias_a", "alias_b",
                                          "bad"]))
    out = {"none": None, "alias_a": a, "alias_b": b}.get(out_kind)
    if out_kind in ("fresh", "bad"):
        out = data.draw(arrays((m, n), wrong=0.5 if out_kind == "bad" else 0.0))
    beta = data.draw(st.sampled_from([0.0, 0.0, 1.0, 0.5]))
    alpha = data.draw(st.sampled_from([1.0, -2.0]))
    _call_and_check(gemm.VARIANTS[variant], gemm.VARIANTS["numpy"], (a, b, out),
                    dict(trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta))


@pytest.mark.parametrize("variant", [v for v in linear.VARIANTS
                                     if "linear_forward" in linear.VARIANTS[v]])
@FUZZ
@given(st.data())
def test_fuzz_linear_forward_arguments(variant, data):
    rows, n_in, n_out = (data.draw(st.integers(0, 6)) for _ in range(3))
    x = data.draw(arrays((rows, n_in)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(st.one_of(st.none(), arrays((n_out,))))
    activation = data.draw(st.sampled_from(list(linear.FUSED[variant]) + ["relu", "swish"]))
    out = data.draw(st.sampled_from(["none", "fresh", "alias"]))
    out = {"none": None, "alias": x}.get(out, None) if out != "fresh" else \
        data.draw(arrays((rows, n_out), wrong=0.2))
    _call_and_check(linear.VARIANTS[variant]["linear_forward"],
                    linear.VARIANTS["numpy"]["linear_forward"], (x, w, b, activation, out), {})


@pytest.mark.parametrize("variant", [v for v in linear.VARIANTS
                                     if "linear_grad_input" in linear.VARIANTS[v]])
@FUZZ
@given(st.data())
def test_fuzz_linear_grad_input_arguments(variant, data):
    rows, n_in, n_out = (data.draw(st.integers(0, 6)) for _ in range(3))
    grad_y = data.draw(arrays((rows, n_out)))
    w = data.draw(arrays((n_out, n_in)))
    activation = data.draw(st.sampled_from(list(activations.FUSABLE) + ["gelu"]))
    x = data.draw(st.one_of(st.none(), arrays((rows, n_in))))
    out = data.draw(st.sampled_from(["none", "fresh", "alias"]))
    out = {"none": None, "alias": x}.get(out, None) if out != "fresh" else \
        data.draw(arrays((rows, n_in), wrong=0.2))
    _call_and_check(linear.VARIANTS[variant]["linear_grad_input"],
                    linear.VARIANTS["numpy"]["linear_grad_input"], (grad_y, w, activation, x, out),
                    {})


@pytest.mark.parametrize("name", activations.NAMES)
@pytest.mark.parametrize("variant", sorted(activations.VARIANTS))
@FUZZ
@given(st.data())
def test_fuzz_activation_arguments(variant, name, data):
    rows, cols = data.draw(st.integers(0, 5)), data.draw(st.integers(1, 6))
    x = data.draw(arrays((rows, cols)))
    kernels, reference = activations.VARIANTS[variant][name], activations.VARIANTS["numpy"][name]
    out = data.draw(st.sampled_from(["none", "same", "fresh"]))
    out = {"none": None, "same": x}.get(out) if out != "fresh" else \
        data.draw(arrays((rows, cols), wrong=0.3))
    _call_and_check(kernels.forward, reference.forward, (x, out), {}, in_place=True)
    grad_y = data.draw(arrays((rows, cols)))
    if isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64) and x.ndim == 2:
        y = reference.forward(np.array(x))
        _call_and_check(kernels.backward, reference.backward, (grad_y, x, y, None), {})


@pytest.mark.parametrize("variant", sorted(losses.VARIANTS))
@FUZZ
@given(st.data())
def test_fuzz_loss_arguments(variant, data):
    rows, classes = data.draw(st.integers(0, 5)), data.draw(st.integers(1, 5))
    logits = data.draw(arrays((rows, classes)))
    labels = data.draw(st.one_of(
        st.lists(st.integers(-1, classes), min_size=rows, max_size=rows).map(np.array),
        arrays((rows,), dtypes=(np.int64, np.int32, np.float64))))
    table, reference = losses.VARIANTS[variant], losses.VARIANTS["numpy"]
    grad_out = data.draw(st.one_of(st.none(), arrays((rows, classes), wrong=0.3)))
    _call_and_check(table["softmax_cross_entropy"], reference["softmax_cross_entropy"],
                    (logits, labels, grad_out), {})
    _call_and_check(table["softmax_cross_entropy_forward"],
                    reference["softmax_cross_entropy_forward"], (logits, labels), {})
    target = data.draw(arrays((rows, classes)))
    _call_and_check(table["mse"], reference["mse"], (logits, target), {})
    _call_and_check(table["mse_backward"], reference["mse_backward"],
                    (logits, target, data.draw(st.one_of(st.none(), st.just(logits),
                                                         arrays((rows, classes), wrong=0.3)))),
                    {})


@pytest.mark.parametrize("variant", sorted(optim.VARIANTS))
@FUZZ
@given(st.data())
def test_fuzz_optimizer_arguments(variant, data):
    shape = (data.draw(st.integers(0, 7)),)
    param = data.draw(arrays(shape))
    grad, state1, state2 = (data.draw(arrays(shape)) for _ in range(3))
    table, reference = optim.VARIANTS[variant], optim.VARIANTS["numpy"]
    if "sgd" in table and data.draw(st.booleans()):
        momentum = data.draw(st.sampled_from([0.0, 0.9]))
        _call_and_check(table["sgd"], reference["sgd"],
                        (param, grad, state1 if momentum else None),
                        dict(lr=0.1, momentum=momentum, nesterov=data.draw(st.booleans()),
                             weight_decay=data.draw(st.sampled_from([0.0, 0.01])),
                             first_step=data.draw(st.booleans())))
    else:
        _call_and_check(table["adam"], reference["adam"], (param, grad, state1, state2),
                        dict(step=data.draw(st.integers(0, 3)), lr=1e-3, beta1=0.9,
                             beta2=0.999, eps=1e-8, weight_decay=0.0,
                             decoupled=data.draw(st.booleans())))
    if "max_norm" in table:
        weight = data.draw(arrays((data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5)))))
        max_norm = data.draw(st.sampled_from([0.5, 3.0, 0.0, -1.0, float("inf"), True, "1"]))
        _call_and_check(table["max_norm"], reference["max_norm"], (weight, max_norm), {})


@pytest.mark.parametrize("variant", sorted(data.VARIANTS))
@FUZZ
@given(st.data())
def test_fuzz_gather_arguments(variant, draw_data):
    n, cols, rows = (draw_data.draw(st.integers(0, 5)) for _ in range(3))
    src = draw_data.draw(arrays((n, cols), dtypes=(np.float32, np.uint8, np.int64)))
    index = draw_data.draw(st.one_of(
        st.lists(st.integers(-1, n), min_size=rows, max_size=rows).map(
            lambda v: np.array(v, dtype=np.int64)),
        arrays((rows,), dtypes=(np.int64, np.float64))))
    out = draw_data.draw(st.one_of(arrays((rows, cols), wrong=0.3), st.just(src)))
    _call_and_check(data.VARIANTS[variant]["gather"], data.VARIANTS["numpy"]["gather"],
                    (src, index, out), {})


# --- what the fuzzers found in the kernels, pinned as regression tests -----------------------
# A-H were fixed by the kernels' owners and stay as regression tests; I and J are below.
# An open finding would be a strict xfail (once fixed, the XPASS fails and the mark goes),
# never an exclusion from the fuzzers above.

def _optimizer_calls(variant, param, state):
    """A call of each optimizer kernel the variant has (sgd, adam)."""
    grad = np.ones_like(param)
    table = optim.VARIANTS[variant]
    calls = {"sgd": lambda: table["sgd"](param, grad, state, lr=0.1, momentum=0.9,
                                         nesterov=False, weight_decay=0.0, first_step=False),
             "adam": lambda: table["adam"](param, grad, state, np.ones_like(param), step=1,
                                           lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                                           weight_decay=0.0, decoupled=False)}
    return [call for op, call in calls.items() if op in table]


@pytest.mark.parametrize("variant", sorted(optim.VARIANTS))
def test_finding_a_read_only_optimizer_arrays_get_a_clean_error(variant):
    for which in ("param", "state"):
        param, state = np.ones(4, np.float32), np.ones(4, np.float32)
        (param if which == "param" else state).flags.writeable = False
        for call in _optimizer_calls(variant, param, state):
            with pytest.raises(ValueError, match="read-only"):
                call()
            assert (param == 1).all() and (state == 1).all()


@pytest.mark.parametrize("variant", sorted(losses.VARIANTS))
def test_finding_b_mse_backward_of_empty_pred(variant):
    empty = np.zeros((0, 3), np.float32)
    with pytest.raises(ValueError, match="pred"):
        losses.VARIANTS[variant]["mse_backward"](empty, empty)


@pytest.mark.parametrize("variant", sorted(data.VARIANTS))
def test_finding_c_gather_into_float16_or_read_only_out(variant):
    # as the reference: a float16 out is filled, a read-only one refused
    gather = data.VARIANTS[variant]["gather"]
    out = np.zeros((2, 3), np.float16)
    gather(np.ones((4, 3), np.float32), np.array([0, 1]), out)
    assert (out == 1).all()
    out = np.zeros((2, 3), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        gather(np.ones((4, 3), np.float32), np.array([0, 1]), out)
    assert (out == 0).all()


def test_finding_d_reference_activations_check_their_input():
    for name, kernels in activations.VARIANTS["numpy"].items():
        with pytest.raises((TypeError, ValueError), match="x must be"):
            kernels.forward(np.ones((), np.float32))


def test_finding_e_loss_forward_on_read_only_logits():
    logits = np.array([[0.5, -1.0, 2.0]], np.float32)
    logits.flags.writeable = False
    expected = losses.VARIANTS["numpy"]["softmax_cross_entropy_forward"](logits, np.array([2]))
    for variant, table in losses.VARIANTS.items():
        got = table["softmax_cross_entropy_forward"](logits, np.array([2]))
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=variant)


def test_finding_f_mse_backward_of_an_f_ordered_pred():
    pred = np.asfortranarray(np.arange(1, 7, dtype=np.float32).reshape(3, 2))
    target = np.zeros((3, 2), np.float32)
    for variant, table in losses.VARIANTS.items():
        for _ in range(3):
            poison = np.full((3, 2), np.nan, np.float32)   # the block np.empty_like reuses
            del poison
            np.testing.assert_allclose(table["mse_backward"](pred, target), pred / 3,
                                       rtol=1e-6, err_msg=variant)


@pytest.mark.parametrize("n", [2, 3])
def test_finding_g_c_gemm_into_a_strided_row(n):
    a, b = np.ones((1, 2)), np.ones((2, n))
    for variant, fn in gemm.VARIANTS.items():
        out = np.full((1, 2 * n), 7.0)[:, ::2]
        fn(a, b, out)
        assert (out == 2).all() and (out.base[:, 1::2] == 7).all(), (variant, out.base)


@pytest.mark.parametrize("name", activations.NAMES)
def test_finding_h_activations_check_their_arguments_like_the_reference(name):
    """Finding H: the numba identity checked nothing in place (a 0-d x was returned as is),
    and numba backwards checked only the arrays their formula reads (grad_y of another
    dtype or shape than x passed through identity's backward)."""
    scalar = np.array(0.5, np.float32)
    x = np.ones((2, 3), np.float32)
    for variant, table in activations.VARIANTS.items():
        act = table[name]
        for call in (lambda: act.forward(scalar), lambda: act.forward(scalar, scalar),
                     lambda: act.backward(np.ones((2, 3)), x, x),              # float64 grad_y
                     lambda: act.backward(x, np.ones((2, 3)), x),              # float64 x
                     lambda: act.backward(x, x, np.ones((3, 2), np.float32)),  # y of another shape
                     lambda: act.backward(x, x[:, :2], x),                     # x of another shape
                     lambda: act.backward(x.copy(), x[:1], x, None)):
            with pytest.raises((TypeError, ValueError)):
                call()
        grad = np.ones((3, 2), np.float32)
        with pytest.raises((TypeError, ValueError)):
            act.backward(grad, x, x, grad)                                     # in place
        assert (grad == 1).all(), f"{variant} {name} wrote into grad_y before refusing"



def _strided(a):
    """A view of a copy of ``a`` that has no unit-stride axis (every other element)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


def test_finding_i_fast_variants_take_every_view_the_reference_takes():
    """Finding I: the fast variants refused views the reference accepts: C GEMM operands
    and out without a unit-stride axis, non-contiguous optimizer arrays ("must be
    C-contiguous"), a non-contiguous out of the numba gather and mse_backward, float16 in
    the numba gather. Each now computes through C-ordered copies (or the reference)."""
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    for variant, table in linear.VARIANTS.items():
        out = np.zeros((5, 3), np.float32).T
        got = table["linear_forward"](_strided(x), np.asfortranarray(w)[::-1], None, "relu", out)
        np.testing.assert_allclose(got, np.maximum(x @ w[::-1].T, 0), rtol=1e-5, atol=1e-6,
                                   err_msg=variant)
    for variant, table in optim.VARIANTS.items():
        arrays = [np.abs(rng.normal(size=6)).astype(np.float32) for _ in range(4)]
        expected = [a.copy() for a in arrays]
        optim.VARIANTS["numpy"]["adam"](*expected, step=2, lr=0.1)
        views = [_strided(a) for a in arrays]
        table["adam"](*views, step=2, lr=0.1)
        for v, e in zip(views, expected):
            np.testing.assert_allclose(v, e, rtol=1e-6, err_msg=variant)
        assert (views[0].base[1::2] == 0).all(), variant           # nothing else written
    src = rng.normal(size=(4, 3)).astype(np.float16)
    for variant, table in data.VARIANTS.items():
        out = _strided(np.zeros((2, 3), np.float32))
        table["gather"](src, np.array([3, 0]), out)
        assert np.array_equal(out, src[[3, 0]].astype(np.float32)), variant
    pred, target = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    for variant, table in losses.VARIANTS.items():
        out = np.zeros((2, 3)).T
        table["mse_backward"](pred, target, out)
        np.testing.assert_allclose(out, 2 * (pred - target) / 6, rtol=1e-12, err_msg=variant)


@pytest.mark.parametrize("variant", sorted(data.VARIANTS))
def test_finding_j_gather_of_no_rows_from_an_empty_source(variant):
    # finding J: the numba gather reshaped an empty source with -1 ("cannot reshape array
    # of size 0 into shape (0,newaxis)")
    out = np.zeros((0, 3), np.float32)
    assert data.VARIANTS[variant]["gather"](np.zeros((0, 3), np.float32),
                                            np.zeros(0, np.int64), out) is out

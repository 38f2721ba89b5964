"""bf16 mixed-precision training (precision="bf16"): the compiled step against a NumPy bf16
emulation (every GEMM operand rounded to bf16, products summed in float64), with each C
bf16 micro-kernel this CPU runs; the numpy backend with bf16-rounding GEMMs as the
reference for batchnorm and dropout; what stays float32; the API and its refusals."""
import numpy as np
import pytest
from conftest import assert_close
from test_mlp_step import bf16_operand, make_steps, reference_gradients

import mlpfast as mf
from mlpfast.backend import Backend, get_backend
from mlpfast.datasets import as_dataset
from mlpfast.kernels import gemm, gemm_bf16, linear, mlp_step

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C GEMM not built")

BF16_EPS = 2.0 ** -8            # bf16's unit roundoff (8 significant bits)


def assert_bf16_close(got, bf16_ref, fp32_ref, what):
    """got is the bf16 computation: within a bf16 bound of the bf16 emulation, and far
    closer to it than the float32 result is (so a float32 computation fails). The bound
    allows the rare element whose float32 sum, summed in another order, rounds to the
    neighbouring bf16 value before the next GEMM."""
    got = np.asarray(got, np.float64)
    error = np.abs(got - bf16_ref)
    assert error.max() <= 2 * BF16_EPS * np.abs(bf16_ref).max() + 1e-30, \
        f"{what}: off by {error.max():.3g} (largest value {np.abs(bf16_ref).max():.3g})"
    gap = np.abs(fp32_ref - bf16_ref).mean()
    assert error.mean() <= 0.1 * gap, \
        f"{what}: mean error {error.mean():.3g} vs the float32 result's {gap:.3g}"


@pytest.mark.parametrize("act", mlp_step.ACTIVATIONS)
@pytest.mark.parametrize("sizes, batch", [([37, 29, 13, 11], 1), ([37, 29, 13, 11], 7),
                                          ([100, 67, 35, 11], 70), ([785, 97, 10], 33)])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_a_bf16_step_matches_the_bf16_emulation(act, sizes, batch, loss, bf16_kernel, rng):
    """Loss, correct rows and every gradient of one bf16 step, on awkward shapes (edge
    tiles of the 32x32 AMX and 12x32 AVX512-BF16 kernels, a batch of 1, k = 785)."""
    n = 150
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    acts = [act] * (len(sizes) - 2) + ["identity"]
    steps, params, (_, _, wgrads, bgrads, _) = make_steps(
        sizes, acts, x, y, batch, loss, "sgd", (0.0, 0.0, 0.0), rng, precision="bf16")
    order = rng.permutation(n).astype(np.int64)
    sums = np.zeros(2)
    assert steps.run(order, 0, 1, np.zeros(1), 0, sums)[:2] == (1, True)
    rows = order[:batch]
    total, correct, grads = reference_gradients(params, acts, x[rows], y[rows], loss, "bf16")
    total32, _, grads32 = reference_gradients(params, acts, x[rows], y[rows], loss)
    assert abs(sums[0] - total) <= 0.1 * abs(total32 - total) + 1e-6 * abs(total)
    assert abs(sums[1] - correct) <= 1          # an argmax may tie within bf16 rounding
    for l, ((dw, db), (dw32, db32)) in enumerate(zip(grads, grads32)):
        assert_bf16_close(wgrads[l], dw, dw32, f"{act} dW{l}")
        assert_bf16_close(bgrads[l], db, db32, f"{act} db{l}")


def test_the_bf16_emulation_is_what_rounding_means():
    """bf16_operand rounds to nearest, ties to even, at bit 16 of a float32."""
    values = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5e-3],
                      np.float64)
    want = [1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, -2.5e-3]
    assert bf16_operand(values)[:4].tolist() == want[:4]
    assert abs(bf16_operand(values)[4] - want[4]) <= 2 ** -9 * 2.5e-3


def _bf16_rounded_bits(bits):
    """The bf16 bits of the float32 of ``bits`` (a Python int), rounded to nearest, ties to
    even, as IEEE 754 defines it: of the two bf16 neighbours (the top 16 bits, and the next
    bf16 away from zero), the nearer by the exact float64 distance; at a tie the one with
    an even last bit; past the largest bf16 by half an ulp or more, inf. NaN: any NaN."""
    sign, magnitude = bits & 0x80000000, bits & 0x7FFFFFFF
    value = float(np.uint32(magnitude).view(np.float32))
    low = magnitude & 0xFFFF0000
    high = low + 0x10000
    below = value - float(np.uint32(low).view(np.float32))
    above = (2.0 ** 128 if high == 0x7F800000 else
             float(np.uint32(high).view(np.float32))) - value
    up = above < below or (above == below and low & 0x10000)
    return (sign | (high if up else low)) >> 16


def test_the_steps_bf16_rounding_is_to_nearest_ties_to_even():
    """mlp_step._round_to_bf16 (the inputs and the hidden h_l of a bf16 step) against the
    IEEE rule written above: float32 values from every binade, exact ties with an even and
    an odd last bf16 bit, both signs, denormals, the largest float32 (to inf); a NaN of any
    payload stays a NaN (adding the rounding bias to 0x7FFFFFFF would carry into the sign)."""
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 0x7F800000, 4000, dtype=np.uint32)      # finite, positive
    bits[:1000] = (bits[:1000] & 0xFFFF0000) | 0x8000              # ties
    bits[1000:1010] = [0x3F808000, 0x3F818000, 0x00008000, 0x00018000, 0x7F7FFFFF,
                       0x7F7F8000, 0x7F7F7FFF, 0x00000001, 0x0000FFFF, 0]
    bits[::2] |= 0x80000000                                         # negative
    x = bits.view(np.float32).reshape(40, 100)
    out = np.zeros((40, 100), np.uint16)
    mlp_step._round_to_bf16(x, out)
    want = np.array([_bf16_rounded_bits(int(b)) for b in bits], np.uint16).reshape(40, 100)
    np.testing.assert_array_equal(out, want)
    nans = np.array([[0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001,
                      0x7FBFFFFF, 0xFF800001, 0x7FFF8000]], np.uint32).view(np.float32)
    out = np.zeros(nans.shape, np.uint16)
    mlp_step._round_to_bf16(nans, out)
    assert np.isnan(gemm_bf16.bf16_to_float32(out)).all(), [hex(v) for v in out[0]]


def bf16_numpy_backend():
    """The numpy backend whose Linear GEMMs read bf16-rounded operands: the layer-by-layer
    reference of bf16 training for any model (batchnorm and dropout included)."""
    numpy = get_backend("numpy")

    def gemm_bf16_operands(a, b, out=None, **kw):
        return gemm.gemm_ref(_rounded(a), _rounded(b), out, **kw)

    def forward(x, w, b, activation="identity", out=None):
        return linear.forward_ref(_rounded(x), _rounded(w), b, activation, out)

    def grad_input(grad_y, w, activation="identity", x=None, out=None):
        return linear.grad_input_ref(_rounded(grad_y), _rounded(w), activation, x, out)
    ops = dict(numpy.ops, gemm=gemm_bf16_operands, linear_forward=forward,
               linear_grad_input=grad_input)
    return Backend("numpy-bf16", "cpu", ops, numpy.activations)


def _rounded(a):
    return gemm_bf16.bf16_to_float32(gemm_bf16.round_to_bf16(np.ascontiguousarray(a)))


def _gradients(model, precision, x, y, rows):
    """The flat gradient of one training batch through the backend's own step."""
    step = model.backend.make_step(model.plan(precision), mf.CrossEntropyLoss(),
                                   mf.optim.SGD(model.parameters(), lr=0.1),
                                   as_dataset(model, x, y), len(rows))
    model.train()
    step.compute_gradients(rows)
    return model.flat_grad.astype(np.float64)


@pytest.mark.parametrize("backend,precision", [("cpu", "bf16"), ("cpu", "fp32"),
                                               ("numba", "fp32")])
@pytest.mark.parametrize("loss", [mf.CrossEntropyLoss, mf.MSELoss])
def test_shares_of_a_batch_add_up_to_the_whole_batch_gradient(backend, precision, loss, rng):
    """Data parallelism's split: the gradients of two ranks' shares (14 and 15 of 29 rows),
    each of its summed loss / 29, add up to the whole batch's. In bf16 the loss gradient is
    rounded before the backward GEMMs, so a share must be divided by 29, not by its own
    rows and rescaled after (that left differences of ~1e-3 of the largest element)."""
    x = rng.standard_normal((60, 45)).astype(np.float32)
    y = rng.integers(0, 7, 60)
    rows = rng.permutation(60)[:29].astype(np.int64)
    model = mf.MLP([45, 33, 7], backend=backend, seed=0)
    loss_fn = loss()
    targets = y if loss is mf.CrossEntropyLoss else np.eye(7, dtype=np.float32)[y]
    data = as_dataset(model, x, targets)
    step = model.backend.make_step(model.plan(precision), loss_fn,
                                   mf.optim.SGD(model.parameters(), lr=0.1), data, 29)
    whole_loss, _ = step.compute_gradients(rows)
    whole = model.flat_grad.astype(np.float64)
    shares, share_loss = np.zeros_like(whole), 0.0
    for part in (rows[:14], rows[14:]):
        part_loss, _ = step.compute_gradients(part, 29)
        shares += model.flat_grad
        share_loss += part_loss * len(part)
    assert share_loss / 29 == pytest.approx(whole_loss, rel=1e-5)
    scale = np.abs(whole).max()
    assert np.abs(shares - whole).max() < 2e-6 * scale, np.abs(shares - whole).max() / scale


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_bf16_with_batchnorm_and_dropout_matches_the_layer_by_layer_emulation(act, rng):
    """Input dropout, batchnorm, the activation and dropout run in float32 between the bf16
    GEMMs: the compiled step's gradients against the numpy layers with bf16 GEMMs."""
    x = rng.standard_normal((200, 45)).astype(np.float32)
    y = rng.integers(0, 7, 200)
    rows = rng.permutation(200)[:64].astype(np.int64)
    results = {}
    for name, backend, precision in (("cpu", "cpu", "bf16"), ("emulation",
                                                              bf16_numpy_backend(), "fp32"),
                                     ("fp32", "numpy", "fp32")):
        model = mf.MLP([45, 40, 33, 7], act, batchnorm=True, dropout=0.3, input_dropout=0.1,
                       backend=backend, seed=0)
        results[name] = _gradients(model, precision, x, y, rows)
    assert_bf16_close(results["cpu"], results["emulation"], results["fp32"], act)


def test_bf16_training_keeps_float32_weights_and_learns(rng):
    """fit in bf16: the weights stay float32 (not bf16 values), the model learns as in fp32,
    and state_dict, save and load keep float32 weights and the precision."""
    x = rng.standard_normal((800, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] > 0.5)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        model = mf.MLP([20, 64, 64, 4], seed=0, backend="cpu", precision=precision)
        history = mf.fit(model, mf.optim.Adam(model.parameters(), lr=1e-2),
                         mf.CrossEntropyLoss(), x, y, epochs=8, batch_size=32, seed=0,
                         progress=False)
        accuracy[precision] = history["train_accuracy"][-1]
    weights = model.state_dict()["0.weight"]
    assert weights.dtype == np.float32
    assert (weights.view(np.uint32) & 0xFFFF).any()          # not rounded to bf16
    assert accuracy["bf16"] >= 0.97 and abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.02
    assert model.precision == "bf16"


def test_save_and_load_keep_the_precision(tmp_path):
    model = mf.MLP([6, 5, 3], seed=0, precision="bf16")
    model.save(tmp_path / "m.npz")
    loaded = mf.load(tmp_path / "m.npz")
    assert loaded.precision == "bf16"
    assert_close(loaded.state_dict()["0.weight"], model.state_dict()["0.weight"], tol=(0, 0))


def test_fit_precision_overrides_the_models_for_one_run(rng):
    """fit(precision="bf16") on an fp32 model trains as the bf16 model does, bit for bit,
    and leaves model.precision alone."""
    x = rng.standard_normal((96, 10)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    results = []
    for model_precision, fit_precision in (("fp32", "bf16"), ("bf16", None)):
        model = mf.MLP([10, 16, 3], seed=0, backend="cpu", precision=model_precision)
        mf.fit(model, mf.optim.Adam(model.parameters(), lr=1e-2), mf.CrossEntropyLoss(), x,
               y, epochs=2, batch_size=16, seed=0, progress=False, precision=fit_precision)
        results.append(model.flat_data.copy())
        assert model.precision == model_precision
    assert np.array_equal(results[0], results[1])


def test_bad_precisions_and_backends_are_refused_before_anything_changes(rng, tmp_path):
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), "
                                         r"got 'fp16'"):
        mf.MLP([6, 5, 3], precision="fp16")
    model = mf.MLP([6, 5, 3], seed=0, backend="cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        model.precision = "bfloat16"
    assert model.precision == "fp32"
    for backend, model in (("numpy", mf.MLP([6, 5, 3], backend="numpy", seed=0)),
                           ("cpu", mf.Sequential(mf.Linear(6, 5, backend="cpu"),
                                                 mf.Softmax(backend="cpu"),
                                                 mf.Linear(5, 3, backend="cpu")))):
        before = model.flat_data.copy()
        opt = mf.optim.Adam(model.parameters(), lr=1e-2)
        message = "fp32 only" if backend == "numpy" else "compiled step, which covers"
        with pytest.raises(ValueError, match=message):
            mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=8,
                   progress=False, precision="bf16", checkpoint=tmp_path / "c.ckpt")
        assert np.array_equal(model.flat_data, before) and opt.step_count == 0
        assert not (tmp_path / "c.ckpt").exists()


def test_a_checkpoint_resumes_only_in_its_precision(rng, tmp_path):
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    path = tmp_path / "run.ckpt"

    def run(precision, **kw):
        model = mf.MLP([6, 8, 3], seed=0, backend="cpu")
        opt = mf.optim.Adam(model.parameters(), lr=1e-2)
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=16, seed=0,
               progress=False, precision=precision, checkpoint=path, **kw)
        return model
    run("bf16")
    with pytest.raises(ValueError, match="precision='bf16', this call has precision='fp32'"):
        run("fp32", resume=path)
    resumed = run("bf16", resume=path)
    assert np.array_equal(resumed.flat_data, run("bf16").flat_data)


def test_the_cli_trains_in_bf16(tmp_path, capsys):
    """mlpfast train mnist --precision bf16 on a small synthetic stand-in is covered by the
    CLI tests; here the option reaches the model."""
    from mlpfast import cli
    parser = cli.build_parser()
    args = parser.parse_args(["train", "mnist", "--precision", "bf16", "--epochs", "1"])
    assert cli.make_model(args, [784, 8, 10]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "mnist", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


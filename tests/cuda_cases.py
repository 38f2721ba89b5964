"""The CUDA test cases: every kernel of kernels/cuda/ against its NumPy reference (awkward
small shapes, float32 and float64, backward passes against finite differences in float64),
and the "cuda" backend against "numpy" over a few training steps.

Collected through tests/test_cuda_sim.py, only in a process where numba.cuda can run
kernels: on a GPU, or with NUMBA_ENABLE_CUDASIM=1 set before numba.cuda was imported.
"""
import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, TOL, assert_close, numerical_grad
from numba import cuda, types

import mlpfast as mf
from mlpfast.kernels import activations as ref_activations
from mlpfast.kernels import batchnorm as ref_batchnorm
from mlpfast.kernels import data as ref_data
from mlpfast.kernels import dropout as ref_dropout
from mlpfast.kernels import gemm as ref_gemm
from mlpfast.kernels import linear as ref_linear
from mlpfast.kernels import losses as ref_losses
from mlpfast.kernels import optim as ref_optim
from mlpfast.kernels.cuda import activations, batchnorm, data, dropout, gemm, linear, losses, optim
from mlpfast.kernels.cuda._device import simulator_enabled
from strict_device import install as install_strict_device_arrays


if simulator_enabled():
    StrictDeviceArray = install_strict_device_arrays()   # refuses what a GPU's arrays refuse


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


# --- registry ------------------------------------------------------------------------------

def test_cuda_backend_has_every_op_and_activation():
    backend = mf.get_backend("cuda")
    assert backend.device == "cuda"
    assert set(backend.activations) == set(ref_activations.NAMES)
    assert set(ref_activations.FUSABLE) <= set(linear.FUSED["cuda"])
    assert "cuda" in mf.backends()
    assert mf.get_backend("auto") is backend          # a usable (or simulated) GPU wins
    assert isinstance(mf.to_numpy(dev(np.ones(3))), np.ndarray)


# --- GEMM --------------------------------------------------------------------------------

GEMM_SHAPES = [(1, 1, 1), (17, 19, 5), (4, 3, 0), (2, 33, 9)]   # (m, n, k)
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


def gemm_inputs(rng, m, n, k, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_reference(trans_a, trans_b, dtype, rng):
    f = gemm.VARIANTS["cuda"]
    for m, n, k in GEMM_SHAPES:
        a, b = gemm_inputs(rng, m, n, k, trans_a, trans_b, dtype)
        expected = ref_gemm.gemm_ref(a, b, trans_a=trans_a, trans_b=trans_b)
        out = f(dev(a), dev(b), trans_a=trans_a, trans_b=trans_b)
        assert_close(out.copy_to_host(), expected, what=f"gemm {m}x{n}x{k} {trans_a} {trans_b}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_alpha_beta_and_never_reads_out_when_beta_is_zero(dtype, rng):
    f = gemm.VARIANTS["cuda"]
    a, b = gemm_inputs(rng, 7, 5, 6, False, True, dtype)
    c0 = rng.standard_normal((7, 5)).astype(dtype)
    expected = ref_gemm.gemm_ref(a, b, c0.copy(), trans_b=True, alpha=0.5, beta=-1.5)
    out = dev(c0)
    f(dev(a), dev(b), out, trans_b=True, alpha=0.5, beta=-1.5)
    assert_close(out.copy_to_host(), expected, what="alpha/beta")
    out = dev(np.full((7, 5), np.nan, dtype=dtype))
    f(dev(a), dev(b), out, trans_b=True)
    assert_close(out.copy_to_host(), a @ b.T, what="beta=0 over NaN")


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("tile", gemm.TILES + ((8, 8, 3, 4, 4), (32, 64, 4, 8, 8)))
def test_gemm_every_tile(tile, trans_a, trans_b, rng):
    # every tile choose_config can pick, and two odd ones (BK 3; 4 x 8 threads of 8 x 8, where
    # a thread's second quad of rows or columns lies ROW_THREADS or COL_THREADS quads on, which
    # differ): two block rows, the second partial, a partial block column, and three tiles
    # of k (the last partial), so the double buffer turns over
    m, n, k = tile[0] + 3, tile[1] // 2 + 3, 2 * tile[2] + 3
    a, b = gemm_inputs(rng, m, n, k, trans_a, trans_b, np.float32)
    out = gemm.gemm_tiled(dev(a), dev(b), None, trans_a, trans_b, tile=tile)
    expected = ref_gemm.gemm_ref(a.astype(np.float64), b.astype(np.float64), trans_a=trans_a,
                                 trans_b=trans_b)
    assert_close(out.copy_to_host(), expected, dtype=np.float32, what=f"tile {tile}")


def test_gemm_block_order_covers_every_tile_of_a_full_and_a_partial_group(rng):
    # 10 block rows (a group of GROUP_M = 8 and one of 2) and 4 block columns (the last
    # partial): every (row, column) tile of C is reached once through block_origin's map
    bm, bn = gemm.TILE_SIMULATOR[:2]
    m, n, k = (gemm.GROUP_M + 2) * bm - 3, 3 * bn + 5, 7
    a, b = gemm_inputs(rng, m, n, k, False, False, np.float32)
    out = gemm.gemm_tiled(dev(a), dev(b), dev(np.full((m, n), np.nan, np.float32)),
                          tile=gemm.TILE_SIMULATOR)
    assert_close(out.copy_to_host(), a.astype(np.float64) @ b, dtype=np.float32,
                 what="grouped block order")


def test_gemm_launches_fit_a_gpus_grid():
    # more block rows than a grid's y axis holds (65535): the blocks go along x
    from numba.cuda.errors import normalize_kernel_dimensions
    from strict_device import check_launch
    m = 65535 * gemm.TILE_SIMULATOR[0] + 1
    a, out = dev(np.zeros((m, 1), np.float32)), dev(np.zeros((m, 20), np.float32))
    for launch in gemm.gemm_launches(a, dev(np.zeros((1, 20), np.float32)), out,
                                     tile=gemm.TILE_SIMULATOR):
        check_launch("gemm", *normalize_kernel_dimensions(launch.grid, launch.block))


EPILOGUES = [dict(), dict(alpha=0.5, beta=-1.5), dict(bias=True, activation="relu"),
             dict(bias=True, activation="gelu", beta=0.5), dict(dact="relu"),
             dict(dact="sigmoid", bias=True), dict(dact="tanh", alpha=2.0, beta=1.0)]


def epilogue_ref(a, b, c0, bias, y, alpha=1.0, beta=0.0, activation="identity",
                 dact="identity"):
    z = alpha * (a.astype(np.float64) @ b) + beta * c0 + (0 if bias is None else bias)
    if dact != "identity":
        y = y.astype(np.float64)
        return ref_activations.REFERENCE[dact].backward(z, y, y)
    return ref_activations.REFERENCE[activation].forward(z)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_gemm_epilogues_and_split_k(epilogue, splits, rng):
    # split-K: k = 29 in slices of 12, 12 and 5, added in order, then the epilogue
    m, n, k = 18, 7, 29
    epilogue = dict(epilogue)
    a, b = gemm_inputs(rng, m, n, k, False, False, np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if epilogue.pop("bias", False) else None
    y = rng.random((m, n)).astype(np.float32)            # an activation's output
    y[::3] = 0                                           # relu' = 0 there
    expected = epilogue_ref(a, b, c0, bias, y, **epilogue)
    out = dev(c0)
    gemm.gemm_tiled(dev(a), dev(b), out, bias=None if bias is None else dev(bias),
                    y=dev(y) if "dact" in epilogue else None, splits=splits, **epilogue)
    assert_close(out.copy_to_host(), expected, dtype=np.float32, what=f"{epilogue} {splits}")


@pytest.mark.parametrize("dtypes", [DTYPES, DTYPES[::-1]])
def test_gemm_split_k_after_a_split_k_in_the_other_dtype(dtypes, rng):
    # split-K's work buffer is reused from call to call, never across dtypes: float64
    # slices summed in a float32 buffer would keep float32's digits
    for dtype in dtypes:
        a, b = gemm_inputs(rng, 9, 7, 29, False, False, dtype)
        out = gemm.gemm_tiled(dev(a), dev(b), splits=3)
        assert_close(out.copy_to_host(), a.astype(np.float64) @ b, dtype=dtype,
                     what=f"split-K in {np.dtype(dtype)}")


def test_choose_config_picks_by_shape(monkeypatch):
    monkeypatch.setattr(gemm, "simulator_enabled", lambda: False)
    monkeypatch.setattr(gemm, "_multiprocessors", lambda: 132)          # an H100 / H200
    picks = {shape: gemm.choose_config(*shape) for shape in [
        (4096, 4096, 4096), (1024, 1024, 1024), (1024, 1024, 784), (1024, 784, 1024),
        (128, 512, 784), (128, 256, 512), (512, 784, 128), (1024, 10, 1024),
        (10, 1024, 1024), (128, 10, 256), (1024, 1536, 1024), (1024, 16, 1024),
        (1024, 17, 1024), (16, 1024, 1024), (1536, 1408, 1024), (128, 256, 256)]}
    assert picks[(4096, 4096, 4096)] == (gemm.TILE_128x128x8, 1)
    assert picks[(1024, 1024, 1024)] == (gemm.TILE_64x64x16, 1)        # 256 blocks
    assert picks[(1024, 1536, 1024)] == (gemm.TILE_128x64x16, 1)
    assert picks[(128, 512, 784)] == (gemm.TILE_32x32x8, 2)            # MNIST b128 layer 1
    assert picks[(128, 256, 512)] == (gemm.TILE_32x32x8, 4)
    assert picks[(1024, 10, 1024)] == (gemm.TILE_64x16x8, 8)           # the logits layer
    assert picks[(10, 1024, 1024)] == (gemm.TILE_16x64x8, 8)           # its weight gradient
    assert picks[(1024, 16, 1024)] == (gemm.TILE_64x16x8, 8)           # narrow: n or m <= 16
    assert picks[(16, 1024, 1024)] == (gemm.TILE_16x64x8, 8)
    assert picks[(1024, 17, 1024)] == (gemm.TILE_32x32x8, 4)
    assert picks[(1536, 1408, 1024)] == (gemm.TILE_128x128x8, 1)       # 132 blocks: one per SM
    assert picks[(128, 256, 256)] == (gemm.TILE_32x32x8, 2)            # slices of >= 128 of k
    assert {tile for tile, _ in picks.values()} == set(gemm.TILES)     # each tested above


def test_gemm_tiles_fit_a_blocks_shared_memory_in_their_dtype(monkeypatch, rng):
    # a block declares at most 48 KiB of static shared memory on every CUDA GPU; ptxas
    # refuses more ("uses too much shared data (0xc800 bytes, 0xc000 max)" for 128x64x16 in
    # float64), which the simulator never checks
    assert gemm.shared_bytes(gemm.TILE_128x64x16, np.float64) == 51200
    a, b = dev(np.ones((40, 24))), dev(np.ones((24, 8)))
    with pytest.raises(ValueError, match="shared memory in float64"):
        gemm.gemm_tiled(a, b, tile=gemm.TILE_128x64x16)
    monkeypatch.setattr(gemm, "simulator_enabled", lambda: False)
    monkeypatch.setattr(gemm, "_multiprocessors", lambda: 132)
    assert gemm.choose_config(2048, 1024, 1024) == (gemm.TILE_128x64x16, 1)    # float32
    for shape in [(2048, 1024, 1024), (4096, 4096, 64), (1024, 1536, 1024), (64, 64, 4096),
                  (1024, 10, 1024), (10, 1024, 1024)]:
        for dtype in DTYPES:
            tile, _ = gemm.choose_config(*shape, dtype)
            assert gemm.shared_bytes(tile, dtype) <= gemm.MAX_STATIC_SHARED, (shape, dtype)
            gemm.check_tile(tile, dtype)
    assert gemm.choose_config(2048, 1024, 1024, np.float64) == (gemm.TILE_64x64x16, 1)


def test_gemm_rejects_bad_epilogues():
    a = dev(np.ones((3, 4), np.float32))
    b = dev(np.ones((4, 2), np.float32))
    y = dev(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="dact must be one of"):
        gemm.gemm_tiled(a, b, dact="gelu", y=y)
    with pytest.raises(ValueError, match="cannot both apply"):
        gemm.gemm_tiled(a, b, dact="relu", y=y, activation="relu")
    with pytest.raises(ValueError, match=r"y must be float32 of shape \(3, 2\)"):
        gemm.gemm_tiled(a, b, dact="relu", y=a)
    with pytest.raises(ValueError, match="out must not overlap input y"):
        gemm.gemm_tiled(a, b, y, dact="relu", y=y)
    with pytest.raises(ValueError, match="splits must be >= 1"):
        gemm.gemm_tiled(a, b, splits=0)


def test_gemm_refuses_tiles_and_biases_it_cannot_run():
    a, b = dev(np.ones((5, 4), np.float32)), dev(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="must split"):        # 9 threads, a 12 x 1 A tile
        gemm.gemm_tiled(a, b, tile=(12, 12, 1, 4, 4))
    with pytest.raises(ValueError, match="multiples of 4"):
        gemm.gemm_tiled(a, b, tile=(8, 8, 4, 2, 4))
    with pytest.raises(ValueError, match=r"bias must be float32 of shape \(3,\)"):
        gemm.gemm_tiled(a, b, bias=dev(np.ones(4, np.float32)))


def test_gemm_takes_at_most_one_slice_of_k_per_tile(rng):
    # splits far beyond k's tiles: slices of whole tiles, so at most ceil(k / BK) of them
    # (a grid's z holds 65535), and the sum is still right
    from numba.cuda.errors import normalize_kernel_dimensions
    from strict_device import check_launch
    tile = gemm.TILE_SIMULATOR
    a, b = gemm_inputs(rng, 5, 6, 9, False, False, np.float32)
    out = dev(np.full((5, 6), np.nan, np.float32))
    launches = gemm.gemm_launches(dev(a), dev(b), out, tile=tile, splits=100000)
    assert 1 < launches[0].grid[2] <= -(-9 // tile[2])
    for launch in launches:
        check_launch("gemm", *normalize_kernel_dimensions(launch.grid, launch.block))
        launch()
    assert_close(out.copy_to_host(), a.astype(np.float64) @ b, dtype=np.float32, what="splits")


@pytest.mark.parametrize("activation", ref_activations.FUSABLE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_grad_input_folds_the_activation_derivative(activation, dtype, rng):
    grad_y = rng.standard_normal((13, 5)).astype(dtype)
    w = rng.standard_normal((5, 9)).astype(dtype)
    x = ref_activations.REFERENCE[activation].forward(rng.standard_normal((13, 9))).astype(dtype)
    expected = ref_linear.grad_input_ref(grad_y.astype(np.float64), w.astype(np.float64),
                                         activation, x.astype(np.float64))
    f = linear.VARIANTS["cuda"]["linear_grad_input"]
    out = f(dev(grad_y), dev(w), activation, dev(x), dev(np.full((13, 9), np.nan, dtype)))
    assert_close(out.copy_to_host(), expected, dtype=dtype, what=activation)
    with pytest.raises(ValueError, match="x .* is needed"):
        f(dev(grad_y), dev(w), "relu")


def test_gemm_strided_views(rng):
    big_a = rng.standard_normal((6, 20))
    big_c = rng.standard_normal((9, 12))
    b = rng.standard_normal((5, 7))
    big_c_dev = dev(big_c)
    a_view, c_view = dev(big_a)[:, 3:8], big_c_dev[1:7, 2:9]     # rows not contiguous
    gemm.VARIANTS["cuda"](a_view, dev(b), c_view)
    expected = big_c.copy()
    expected[1:7, 2:9] = big_a[:, 3:8] @ b                        # nothing outside the view
    assert_close(big_c_dev.copy_to_host(), expected)


def test_gemm_rejects_bad_input(rng):
    f = gemm.VARIANTS["cuda"]
    a = dev(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="a must be a CUDA device array"):
        f(np.ones((3, 4), np.float32), a)
    with pytest.raises(ValueError, match="inner dimensions"):
        f(a, a)
    with pytest.raises(TypeError, match="same dtype"):
        f(a, dev(np.ones((4, 2))))
    with pytest.raises(ValueError, match="beta != 0"):
        f(a, a, trans_b=True, beta=1.0)
    square = dev(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="must not overlap input a"):
        f(square, square[:, :], square)
    with pytest.raises(ValueError, match="out must have shape"):
        f(a, a, dev(np.zeros((4, 4), np.float32)), trans_b=True)


# --- linear: fused GEMM epilogue, bias gradient --------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_forward_every_fused_activation(dtype, rng):
    x = rng.standard_normal((18, 7)).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    f = linear.VARIANTS["cuda"]["linear_forward"]
    for activation in linear.FUSED["cuda"]:
        expected = ref_linear.forward_ref(x.astype(np.float64), w.astype(np.float64),
                                          b.astype(np.float64), activation)
        y = f(dev(x), dev(w), dev(b), activation, dev(np.empty((18, 5), dtype)))
        assert_close(y.copy_to_host(), expected, dtype=dtype, what=activation)
    no_bias = f(dev(x), dev(w), None, "relu")
    assert_close(no_bias.copy_to_host(), np.maximum(x.astype(np.float64) @ w.T, 0), dtype=dtype)
    with pytest.raises(ValueError, match="activation must be one of"):
        f(dev(x), dev(w), dev(b), "softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (37, 5), (0, 4)])
def test_bias_grad_matches_reference(dtype, shape, rng):
    g = rng.standard_normal(shape).astype(dtype)
    out = linear.VARIANTS["cuda"]["bias_grad"](dev(g), dev(np.full(shape[1], 7, dtype)))
    assert_close(out.copy_to_host(), ref_linear.bias_grad_ref(g.astype(np.float64)), dtype=dtype)


# --- activations ---------------------------------------------------------------------------

ACT_PARAMS = {"leaky_relu": {"negative_slope": 0.07}}


def activation_input(rng, shape, dtype):
    x = 3 * rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5             # away from the relu kink for finite differences
    return x.astype(dtype)


@pytest.mark.parametrize("name", ref_activations.NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_matches_reference(name, dtype, rng):
    params = ACT_PARAMS.get(name, {})
    ref, fast = ref_activations.REFERENCE[name], activations.VARIANTS["cuda"][name]
    for shape in [(1, 1), (7, 23), (0, 3)]:
        x = activation_input(rng, shape, dtype)
        g = rng.standard_normal(shape).astype(dtype)
        y_ref = ref.forward(x.astype(np.float64), **params)
        x_dev = dev(x)
        y = fast.forward(x_dev, **params)
        assert_close(y.copy_to_host(), y_ref, dtype=dtype, what=f"{name} forward {shape}")
        dx_ref = ref.backward(g.astype(np.float64), x.astype(np.float64), y_ref, **params)
        g_dev = dev(g)
        dx = fast.backward(g_dev, x_dev, y, g_dev, **params)          # in place over grad_y
        assert_close(dx.copy_to_host(), dx_ref, dtype=dtype, what=f"{name} backward {shape}",
                     tol={np.float32: (1e-5, 2e-4), np.float64: (1e-12, 1e-10)}[dtype])
        fast.forward(x_dev, x_dev, **params)                          # in place over x
        assert_close(x_dev.copy_to_host(), y_ref, dtype=dtype, what=f"{name} in place")


@pytest.mark.parametrize("name", ref_activations.NAMES)
def test_activation_backward_matches_finite_differences(name, rng):
    params = ACT_PARAMS.get(name, {})
    act = activations.VARIANTS["cuda"][name]
    x = activation_input(rng, (2, 3), np.float64)
    g = rng.standard_normal((2, 3))
    numeric = numerical_grad(lambda: float((act.forward(dev(x), **params).copy_to_host()
                                            * g).sum()), x)
    x_dev = dev(x)
    analytic = act.backward(dev(g), x_dev, act.forward(x_dev, **params), **params)
    assert_close(analytic.copy_to_host(), numeric, tol=GRAD_TOL, what=name)


def test_activation_rejects_bad_input():
    relu = activations.VARIANTS["cuda"]["relu"]
    with pytest.raises(TypeError, match="x must be a CUDA device array"):
        relu.forward(np.ones((2, 2)))
    with pytest.raises(TypeError, match="relu takes no parameters"):
        relu.forward(dev(np.ones((2, 2))), negative_slope=0.1)
    with pytest.raises(ValueError, match="out must have shape"):
        relu.forward(dev(np.ones((2, 2))), dev(np.ones((2, 3))))


def test_leaky_relu_default_slope_is_0_01_as_in_torch(rng):
    x, g = activation_input(rng, (3, 4), np.float64), rng.standard_normal((3, 4))
    leaky = activations.VARIANTS["cuda"]["leaky_relu"]
    y = leaky.forward(dev(x))
    assert_close(y.copy_to_host(), np.where(x > 0, x, 0.01 * x), what="forward")
    assert_close(leaky.backward(dev(g), dev(x), y).copy_to_host(), np.where(x > 0, g, 0.01 * g),
                 what="backward")


# --- losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (45, 10)])
def test_softmax_cross_entropy_matches_reference(dtype, shape, rng):
    logits = (4 * rng.standard_normal(shape)).astype(dtype)
    logits[0] += 1e4                                   # large logits must not overflow
    labels = rng.integers(0, shape[1], shape[0])
    labels[-1] = logits[-1].argmax()                   # at least one correct row
    loss_ref, grad_ref, correct_ref = ref_losses.softmax_cross_entropy_ref(
        logits.astype(np.float64), labels)
    fused = losses.VARIANTS["cuda"]["softmax_cross_entropy"]
    grad_out = dev(np.full(shape, np.nan, dtype))
    loss, grad, correct = fused(dev(logits), labels, grad_out)
    assert grad is grad_out and correct == correct_ref
    atol, rtol = TOL[dtype]
    assert abs(loss - loss_ref) <= atol + rtol * abs(loss_ref)
    assert_close(grad.copy_to_host(), grad_ref, dtype=dtype, what="grad")
    loss_only = losses.VARIANTS["cuda"]["softmax_cross_entropy_forward"](dev(logits), labels)
    assert abs(loss_only - loss_ref) <= atol + rtol * abs(loss_ref)
    _, fresh, _ = fused(dev(logits), labels.astype(np.int32))
    assert_close(fresh.copy_to_host(), grad_ref, dtype=dtype, what="grad, no grad_out")


def test_softmax_cross_entropy_gradient_matches_finite_differences(rng):
    logits = rng.standard_normal((3, 4))
    labels = np.array([2, 0, 3])
    forward = losses.VARIANTS["cuda"]["softmax_cross_entropy_forward"]
    numeric = numerical_grad(lambda: forward(dev(logits), labels), logits)
    _, grad, _ = losses.VARIANTS["cuda"]["softmax_cross_entropy"](dev(logits), labels)
    assert_close(grad.copy_to_host(), numeric, tol=GRAD_TOL)


def test_softmax_cross_entropy_rejects_bad_labels_before_writing():
    fused = losses.VARIANTS["cuda"]["softmax_cross_entropy"]
    logits, grad_out = dev(np.zeros((2, 3))), dev(np.full((2, 3), 5.0))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*found 3"):
        fused(logits, np.array([0, 3]), grad_out)
    with pytest.raises(TypeError, match="labels must be a 1-D NumPy integer array"):
        fused(logits, np.array([0.0, 1.0]), grad_out)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        fused(logits, np.array([0]), grad_out)
    with pytest.raises(TypeError, match="logits must be a CUDA device array"):
        fused(np.zeros((2, 3)), np.array([0, 1]), grad_out)
    assert (grad_out.copy_to_host() == 5.0).all()


def test_ties_go_to_the_first_largest_output_as_in_numpy(rng):
    # a row whose largest logits tie counts as correct only for the first of them
    # (np.argmax), in cross-entropy's correct rows and the cuda step's MSE on labels
    from mlpfast.kernels.cuda import mlp_step
    logits = np.array([[1.0, 3.0, 3.0], [0.0, 0.0, 0.0], [2.0, -1.0, 2.0]])
    for labels in (np.array([1, 0, 0]), np.array([2, 1, 2])):
        expected = int((logits.argmax(axis=1) == labels).sum())
        _, _, correct = losses.VARIANTS["cuda"]["softmax_cross_entropy"](dev(logits), labels)
        assert correct == expected, labels
        row_stats = dev(np.zeros((3, 2)))
        mlp_step.SQUARED_ERROR["labels"][1, 4](dev(logits.astype(np.float32)), dev(labels),
                                               dev(np.zeros((3, 3), np.float32)), row_stats)
        assert row_stats.copy_to_host()[:, 1].sum() == expected, labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (50, 7), (5,)])
def test_mse_matches_reference(dtype, shape, rng):
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss = losses.VARIANTS["cuda"]["mse"](dev(pred), dev(target))
    expected = ref_losses.mse_ref(pred, target)
    assert abs(loss - expected) <= 1e-12 + 1e-10 * expected      # float64 sums either way
    grad = losses.VARIANTS["cuda"]["mse_backward"](dev(pred), dev(target))
    assert_close(grad.copy_to_host(),
                 ref_losses.mse_backward_ref(pred.astype(np.float64), target), dtype=dtype)


def test_mse_backward_matches_finite_differences(rng):
    pred, target = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    numeric = numerical_grad(lambda: losses.VARIANTS["cuda"]["mse"](dev(pred), dev(target)),
                             pred)
    grad = losses.VARIANTS["cuda"]["mse_backward"](dev(pred), dev(target))
    assert_close(grad.copy_to_host(), numeric, tol=GRAD_TOL)


def test_mse_backward_rejects_what_mse_rejects():
    backward = losses.VARIANTS["cuda"]["mse_backward"]
    with pytest.raises(ValueError, match="target must have the shape of pred"):
        backward(dev(np.ones((2, 3))), dev(np.ones((3, 2))))
    with pytest.raises(ValueError, match="pred must not be empty"):
        backward(dev(np.ones((0, 3))), dev(np.ones((0, 3))))


# --- optimizers --------------------------------------------------------------------------------

SGD_CASES = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
             dict(momentum=0.5, weight_decay=0.01)]
ADAM_CASES = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled=True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", SGD_CASES)
def test_sgd_matches_reference_over_steps(dtype, hyper, rng):
    for size in (1, 301):
        param = rng.standard_normal(size).astype(dtype)
        buf = np.zeros(size, dtype)
        param_dev, buf_dev = dev(param), dev(buf)
        for step in range(3):
            grad = rng.standard_normal(size).astype(dtype)
            kwargs = dict(lr=0.1, first_step=step == 0, **hyper)
            ref_optim.sgd_ref(param, grad, buf, **kwargs)
            optim.VARIANTS["cuda"]["sgd"](param_dev, dev(grad), buf_dev, **kwargs)
        assert_close(param_dev.copy_to_host(), param, what=f"sgd {hyper} param")
        assert_close(buf_dev.copy_to_host(), buf, what=f"sgd {hyper} momentum buffer")


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_first_step_takes_the_gradient_as_the_momentum_buffer(nesterov, rng):
    # torch's first step sets buf = g whatever the buffer held (here NaN)
    param, grad = rng.standard_normal(37), rng.standard_normal(37)
    buf = np.full(37, np.nan)
    on_device = [dev(param), dev(buf)]
    kwargs = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01, first_step=True)
    optim.VARIANTS["cuda"]["sgd"](on_device[0], dev(grad), on_device[1], **kwargs)
    g = grad + 0.01 * param
    assert_close(on_device[1].copy_to_host(), g, what="momentum buffer")
    assert_close(on_device[0].copy_to_host(), param - 0.1 * (g + 0.9 * g if nesterov else g),
                 what="param")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", ADAM_CASES)
def test_adam_matches_reference_over_steps(dtype, hyper, rng):
    for size in (1, 301):
        param = rng.standard_normal(size).astype(dtype)
        m, v = np.zeros(size, dtype), np.zeros(size, dtype)
        on_device = [dev(param), dev(m), dev(v)]
        for step in range(1, 4):
            grad = rng.standard_normal(size).astype(dtype)
            kwargs = dict(step=step, lr=0.01, **hyper)
            ref_optim.adam_ref(param, grad, m, v, **kwargs)
            optim.VARIANTS["cuda"]["adam"](on_device[0], dev(grad), *on_device[1:], **kwargs)
        for actual, expected, what in zip(on_device, (param, m, v), ("param", "m", "v")):
            assert_close(actual.copy_to_host(), expected, what=f"adam {hyper} {what}")


def test_optimizers_reject_bad_input():
    p = dev(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="grad must have the shape of param"):
        optim.VARIANTS["cuda"]["sgd"](p, dev(np.zeros(3, np.float32)), None, lr=0.1)
    with pytest.raises(TypeError, match="exp_avg must be float32"):
        optim.VARIANTS["cuda"]["adam"](p, p, dev(np.zeros(4)), p, step=1, lr=0.1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        optim.VARIANTS["cuda"]["adam"](p, p, p, p, step=0, lr=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_norm_matches_reference(dtype, rng):
    for shape in [(1, 1), (9, 13), (0, 3)]:
        weight = (2 * rng.standard_normal(shape)).astype(dtype)
        on_device = dev(weight)
        ref_optim.max_norm_ref(weight, 2.5)
        optim.VARIANTS["cuda"]["max_norm"](on_device, 2.5)
        assert_close(on_device.copy_to_host(), weight, what=f"max_norm {shape}")
    with pytest.raises(ValueError, match="max_norm must be a positive"):
        optim.VARIANTS["cuda"]["max_norm"](dev(np.ones((2, 2))), 0.0)


# --- batchnorm -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_reference(dtype, affine, rng):
    ops = batchnorm.VARIANTS["cuda"]
    for rows, cols in [(2, 1), (3, 7), (37, 5)]:
        x = (3 * rng.standard_normal((rows, cols)) + 1).astype(dtype)
        g = rng.standard_normal((rows, cols)).astype(dtype)
        weight = (1 + rng.standard_normal(cols)).astype(dtype) if affine else None
        bias = rng.standard_normal(cols).astype(dtype) if affine else None
        rm, rv = rng.standard_normal(cols).astype(dtype), (0.5 + rng.random(cols)).astype(dtype)
        rm_dev, rv_dev = dev(rm), dev(rv)
        w_dev, b_dev = (dev(weight), dev(bias)) if affine else (None, None)
        expected = ref_batchnorm.train_ref(x, weight, bias, rm, rv, momentum=0.3, eps=1e-4)
        y, mean, invstd = ops["batchnorm_train"](dev(x), w_dev, b_dev, rm_dev, rv_dev,
                                                 momentum=0.3, eps=1e-4)
        for actual, wanted, what in zip((y, mean, invstd, rm_dev, rv_dev), expected + (rm, rv),
                                        ("y", "mean", "invstd", "running_mean", "running_var")):
            assert_close(actual.copy_to_host(), wanted, what=f"{what} {rows}x{cols}")
        grads = ops["batchnorm_backward"](dev(g), dev(x), w_dev, mean, invstd)
        wanted = ref_batchnorm.backward_ref(g, x, weight, expected[1], expected[2])
        assert_close(grads[0].copy_to_host(), wanted[0], what="grad_x",
                     tol={np.float32: (1e-4, 1e-4), np.float64: (1e-11, 1e-10)}[dtype])
        # without weights too: the sums the reference returns
        assert_close(grads[1].copy_to_host(), wanted[1], what="grad_weight")
        assert_close(grads[2].copy_to_host(), wanted[2], what="grad_bias")
        y_eval = ops["batchnorm_eval"](dev(x), w_dev, b_dev, rm_dev, rv_dev, eps=1e-4)
        assert_close(y_eval.copy_to_host(), ref_batchnorm.eval_ref(x, weight, bias, rm, rv,
                                                                   eps=1e-4), what="eval")


def test_batchnorm_backward_matches_finite_differences(rng):
    ops = batchnorm.VARIANTS["cuda"]
    x, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    weight, bias = 1 + rng.standard_normal(3), rng.standard_normal(3)

    def loss():
        y = ops["batchnorm_train"](dev(x), dev(weight), dev(bias), dev(np.zeros(3)),
                                   dev(np.ones(3)))[0]
        return float((y.copy_to_host() * g).sum())

    _, mean, invstd = ops["batchnorm_train"](dev(x), dev(weight), dev(bias), dev(np.zeros(3)),
                                             dev(np.ones(3)))
    grads = ops["batchnorm_backward"](dev(g), dev(x), dev(weight), mean, invstd)
    for grad, wrt in zip(grads, (x, weight, bias)):
        assert_close(grad.copy_to_host(), numerical_grad(loss, wrt), tol=GRAD_TOL)


def test_batchnorm_rejects_bad_input():
    ops = batchnorm.VARIANTS["cuda"]
    x, v = dev(np.ones((4, 3), np.float32)), dev(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="more than 1 sample"):
        ops["batchnorm_train"](x[:1], v, v, dev(np.zeros(3, np.float32)), v)
    with pytest.raises(TypeError, match="x must be a CUDA device array"):
        ops["batchnorm_eval"](np.ones((4, 3), np.float32), v, v, v, v)


# --- dropout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_equals_the_cpu_mask_bit_for_bit(dtype, rng):
    ops = dropout.VARIANTS["cuda"]
    for shape, (p, seed, step, layer) in [((1, 1), (0.5, 0, 0, 0)), ((7, 13), (0.3, 99, 5, 2)),
                                          ((3, 33), (0.8, 2 ** 64 - 1, 2 ** 33, 7)),
                                          ((0, 3), (0.5, 1, 1, 1))]:
        x, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
        y_ref, keep_ref = ref_dropout.forward_ref(x, p, seed, step, layer)
        y, keep = ops["dropout_forward"](dev(x), p, seed, step, layer)
        np.testing.assert_array_equal(keep.copy_to_host(), keep_ref)
        np.testing.assert_array_equal(y.copy_to_host(), y_ref)
        np.testing.assert_array_equal(ops["dropout_mask"](shape, p, seed, step, layer)
                                      .copy_to_host(), keep_ref)
        np.testing.assert_array_equal(ops["dropout_backward"](dev(g), keep, p).copy_to_host(),
                                      ref_dropout.backward_ref(g, keep_ref, p))


def test_dropout_rejects_bad_input():
    ops = dropout.VARIANTS["cuda"]
    x = dev(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="p must be a probability"):
        ops["dropout_forward"](x, -0.1, 0, 0, 0)
    with pytest.raises(ValueError, match="keep must be the uint8 mask"):
        ops["dropout_backward"](x, dev(np.ones((2, 3), np.float32)), 0.5)


# --- gather ------------------------------------------------------------------------------------

@pytest.mark.parametrize("src_dtype,out_dtype", [(np.float32, np.float32), (np.uint8, np.float32),
                                                 (np.int64, np.int64), (np.float64, np.float64)])
def test_gather_matches_reference(src_dtype, out_dtype, rng):
    gather = data.VARIANTS["cuda"]["gather"]
    for src_shape, index in [((11, 6), np.array([3, 3, 0, 10, 7])), ((5,), np.array([4, 1])),
                             ((7, 2, 3), rng.integers(0, 7, 9)), ((4, 3), np.array([], int))]:
        src = (100 * rng.random(src_shape)).astype(src_dtype)
        expected = np.empty((len(index),) + src_shape[1:], out_dtype)
        ref_data.gather_ref(src, index, expected)
        out = gather(dev(src), index, dev(np.zeros_like(expected)))
        np.testing.assert_array_equal(out.copy_to_host(), expected)


def test_gather_rejects_bad_input():
    gather = data.VARIANTS["cuda"]["gather"]
    src, out = dev(np.zeros((4, 2))), dev(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"index must lie in \[0, 4\)"):
        gather(src, np.array([0, 4]), out)
    with pytest.raises(TypeError, match="src must be a CUDA device array"):
        gather(np.zeros((4, 2)), np.array([0, 1]), out)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 2\)"):
        gather(src, np.array([0, 1, 2]), out)
    with pytest.raises(ValueError, match="out must not overlap src"):
        gather(src, np.array([0, 1]), src[:2])


def test_outputs_may_touch_but_not_overlap_their_inputs(rng):
    # rows 0-1, 2-3 and 4-5 of one device array are adjacent, not overlapping: an out just
    # before or just after its inputs is accepted; one sharing a row with them is refused
    relu = activations.VARIANTS["cuda"]["relu"]
    host, g = rng.standard_normal((6, 3)), rng.standard_normal((2, 3))
    rows = dev(host)
    for out_rows in (slice(0, 2), slice(4, 6)):           # x = y = rows 2-3
        relu.backward(dev(g), rows[2:4], rows[2:4], rows[out_rows])
        assert_close(rows.copy_to_host()[out_rows], np.where(host[2:4] > 0, g, 0),
                     what=f"relu backward into rows {out_rows}")
    with pytest.raises(ValueError, match="out must not overlap input x"):
        relu.backward(dev(g), rows[2:4], rows[2:4], rows[3:5])
    with pytest.raises(TypeError, match="out must be float64"):
        relu.forward(rows, dev(np.zeros((6, 3), np.float32)))
    flat = dev(host.reshape(-1))
    with pytest.raises(ValueError, match="out must not overlap input grad_y"):
        linear.VARIANTS["cuda"]["bias_grad"](flat[:9].reshape(3, 3), flat[8:11])
    with pytest.raises(ValueError, match=r"out must have shape \(3,\)"):
        linear.VARIANTS["cuda"]["bias_grad"](flat[:9].reshape(3, 3), flat[9:11])


def test_grid_stride_loops_start_each_row_and_column_afresh(monkeypatch, rng):
    # kernels with one thread per row (softmax, cross-entropy, max_norm, the step's squared
    # error) or per column (bias_grad, batchnorm) on more rows or columns than a grid of
    # one block has threads: a thread's second and third row or column starts its max,
    # argmax and sums afresh. Such a loop takes a second turn on a GPU only past 65535
    # blocks, in the simulator past 4 blocks; here after one
    from mlpfast.kernels.cuda import _device, mlp_step
    monkeypatch.setattr(_device, "MAX_BLOCKS", 1)
    threads = _device.THREADS_PER_BLOCK
    many = 2 * threads + 3
    tall, g = 2 * rng.standard_normal((many, 5)), rng.standard_normal((many, 5))
    wide = 3 * rng.standard_normal((4, many)) + 1
    softmax, ref = activations.VARIANTS["cuda"]["softmax"], ref_activations.REFERENCE["softmax"]
    y, y_ref = softmax.forward(dev(tall)), ref.forward(tall)
    assert_close(y.copy_to_host(), y_ref, what="softmax")
    assert_close(softmax.backward(dev(g), dev(tall), y).copy_to_host(),
                 ref.backward(g, tall, y_ref), what="softmax backward")
    labels = rng.integers(0, 5, many)
    loss, grad, correct = losses.VARIANTS["cuda"]["softmax_cross_entropy"](dev(tall), labels)
    loss_ref, grad_ref, correct_ref = ref_losses.softmax_cross_entropy_ref(tall, labels)
    assert correct == correct_ref and abs(loss - loss_ref) <= 1e-10 * loss_ref
    assert_close(grad.copy_to_host(), grad_ref, what="cross-entropy gradient")
    weight = tall.copy()                       # row norms on both sides of 4
    on_device = dev(weight)
    ref_optim.max_norm_ref(weight, 4.0)
    optim.VARIANTS["cuda"]["max_norm"](on_device, 4.0)
    assert_close(on_device.copy_to_host(), weight, what="max_norm")
    assert_close(linear.VARIANTS["cuda"]["bias_grad"](dev(wide)).copy_to_host(),
                 wide.sum(axis=0), what="bias_grad")
    ops, cols = batchnorm.VARIANTS["cuda"], wide.shape[1]
    weight, bias = 1 + rng.standard_normal(cols), rng.standard_normal(cols)
    rm, rv = np.zeros(cols), np.ones(cols)
    rm_dev, rv_dev = dev(rm), dev(rv)
    expected = ref_batchnorm.train_ref(wide, weight, bias, rm, rv)
    got = ops["batchnorm_train"](dev(wide), dev(weight), dev(bias), rm_dev, rv_dev)
    for actual, wanted, what in zip(got + (rm_dev, rv_dev), expected + (rm, rv),
                                    ("y", "mean", "invstd", "running_mean", "running_var")):
        assert_close(actual.copy_to_host(), wanted, what=f"batchnorm {what}")
    g_wide = rng.standard_normal(wide.shape)
    grads = ops["batchnorm_backward"](dev(g_wide), dev(wide), dev(weight), got[1], got[2])
    wanted = ref_batchnorm.backward_ref(g_wide, wide, weight, expected[1], expected[2])
    for actual, want, what in zip(grads, wanted, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(actual.copy_to_host(), want, what=f"batchnorm {what}")
    pred = tall.astype(np.float32)               # the step's MSE, with labels and targets
    targets = rng.standard_normal(pred.shape).astype(np.float32)
    diff = pred.astype(np.float64) - targets
    for kind, target, hits in (("targets", targets, np.zeros(many)),
                               ("labels", labels, pred.argmax(axis=1) == labels)):
        if kind == "labels":
            diff = pred.astype(np.float64) - np.eye(5)[labels]
        grad, row_stats = dev(np.zeros_like(pred)), dev(np.zeros((many, 2)))
        mlp_step.SQUARED_ERROR[kind][1, threads](dev(pred), dev(target), grad, row_stats)
        assert_close(grad.copy_to_host(), 2 * diff / diff.size, dtype=np.float32, what=kind)
        assert_close(row_stats.copy_to_host(), np.stack([(diff ** 2).mean(axis=1), hits], 1),
                     what=f"squared error rows, {kind}")


# --- the engine on "cuda" against "numpy" -------------------------------------------------------

def train_a_few_steps(backend, loss_fn, optimizer, y):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    model = mf.MLP([12, 9, 5], activation="tanh", backend=backend, seed=1)
    opt = optimizer(model.parameters())
    history = mf.fit(model, opt, loss_fn, x, y, epochs=2, batch_size=16, seed=3, progress=False,
                     val=(x[:9], y[:9]))
    return model, opt, history, x


@pytest.mark.parametrize("loss,optimizer", [
    ("cross_entropy", lambda params: mf.optim.Adam(params, lr=1e-2, weight_decay=1e-3)),
    ("mse", lambda params: mf.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)),
])
def test_training_on_cuda_matches_numpy(loss, optimizer):
    rng = np.random.default_rng(0)
    if loss == "cross_entropy":
        y, make_loss = rng.integers(0, 5, 40), mf.CrossEntropyLoss
    else:
        y, make_loss = rng.standard_normal((40, 5)).astype(np.float32), mf.MSELoss
    runs = {name: train_a_few_steps(name, make_loss(), optimizer, y) for name in ("numpy", "cuda")}
    (ref_model, ref_opt, ref_hist, x), (model, opt, hist, _) = runs["numpy"], runs["cuda"]
    tol = (1e-5, 1e-4)
    for key in ("loss", "val_loss"):
        assert_close(hist[key], ref_hist[key], tol=tol, what=f"epoch {key}")
    state, ref_state = model.state_dict(), ref_model.state_dict()
    for key in ref_state:
        assert isinstance(state[key], np.ndarray)
        assert_close(state[key], ref_state[key], tol=tol, what=key)
    for key, value in ref_opt.state_dict()["state"].items():
        assert_close(opt.state_dict()["state"][key], value, tol=tol, what=key)
    restored = optimizer(model.parameters())
    restored.load_state_dict(opt.state_dict())                    # host arrays -> device
    for key, value in opt.state_dict()["state"].items():
        np.testing.assert_array_equal(restored.state_dict()["state"][key], value)
    assert_close(model(x[:3]), ref_model(x[:3]), tol=tol, what="model(x)")
    assert isinstance(mf.to_numpy(model.layers[0].weight), np.ndarray)
    if loss == "cross_entropy":
        assert hist["train_accuracy"] == ref_hist["train_accuracy"]
        assert mf.evaluate(model, x, y)["accuracy"] == mf.evaluate(ref_model, x, y)["accuracy"]


def test_weights_move_between_cuda_and_numpy(tmp_path):
    model = mf.MLP([6, 4, 3], activation="relu", backend="cuda", seed=2)
    path = tmp_path / "model.npz"
    model.save(path)
    on_numpy = mf.load(path, backend="numpy")
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    assert_close(on_numpy(x), model(x), tol=(1e-6, 1e-5))
    on_numpy.layers[0].weight.data[...] *= 2
    model.load_state_dict(on_numpy.state_dict())
    assert_close(model(x), on_numpy(x), tol=(1e-6, 1e-5))


def test_batchnorm_dropout_and_max_norm_train_on_cuda_as_on_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 12)).astype(np.float32), rng.integers(0, 5, 40)
    runs = {}
    for name in ("numpy", "cuda"):
        model = mf.MLP([12, 9, 5], batchnorm=True, dropout=0.3, backend=name, seed=1)
        opt = mf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, max_norm=1.0)
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=16,
                         seed=3, progress=False, val=(x[:9], y[:9]))
        runs[name] = model, history
    (ref_model, ref_hist), (model, hist) = runs["numpy"], runs["cuda"]
    tol = (1e-5, 1e-4)
    for key in ("loss", "val_loss"):
        assert_close(hist[key], ref_hist[key], tol=tol, what=f"epoch {key}")
    ref_state = ref_model.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, ref_state[key], tol=tol, what=key)
    assert int(model.state_dict()["1.num_batches_tracked"]) == 6
    assert_close(model(x[:5]), ref_model(x[:5]), tol=tol, what="eval logits")


# --- against PyTorch ----------------------------------------------------------------------------

def test_cuda_trains_as_pytorch_does():
    """Logits, loss, every gradient and 20 Adam steps against PyTorch (tests/torch_parity.py)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from torch_parity import check_against_torch
    check_against_torch(torch, "cuda", "tanh", sizes=(13, 11, 7), batch=8)

def fit_small_cuda_model(x, y, epochs, **kwargs):
    model = mf.MLP([6, 7, 3], activation="relu", backend="cuda", seed=4)
    opt = mf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=epochs, batch_size=8,
                     seed=6, progress=False, **kwargs)
    return model, opt, history


def test_checkpoint_resume_predict_and_zero_grad_on_cuda(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 6)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    path = tmp_path / "run.npz"
    model_a, _, hist_a = fit_small_cuda_model(x, y, 2)
    fit_small_cuda_model(x, y, 1, checkpoint=path, checkpoint_every=3)   # checkpoint: epoch 1
    model_b, opt_b, hist_b = fit_small_cuda_model(x, y, 2, resume=path)
    assert hist_b["loss"] == hist_a["loss"]                               # exact resume
    for key, value in model_a.state_dict().items():
        np.testing.assert_array_equal(model_b.state_dict()[key], value)
    on_numpy = mf.MLP([6, 7, 3], activation="relu", backend="numpy", seed=0)
    on_numpy.load_state_dict(model_b.state_dict())
    np.testing.assert_array_equal(mf.predict(model_b, x), mf.predict(on_numpy, x))
    assert_close(mf.predict_proba(model_b, x), mf.predict_proba(on_numpy, x), tol=(1e-6, 1e-5))
    first_layer = model_b.layers[0].weight.grad.size + model_b.layers[0].bias.grad.size
    for zero_grad, zeros in ((model_b.layers[0].zero_grad, first_layer),
                             (model_b.zero_grad, None), (opt_b.zero_grad, None)):
        model_b.flat_grad.copy_to_device(np.ones(model_b.flat_grad.shape, np.float32))
        zero_grad()
        grads = model_b.flat_grad.copy_to_host()
        assert not grads[:zeros].any() and grads[zeros:].all() if zeros else not grads.any()


# --- the cuda training step (kernels/cuda/mlp_step.py, mlpfast/backend/cuda_step.py) ------------
# Against the numpy backend's layer-by-layer step (the reference kernels) from the same weights
# and batches: 23 rows in batches of 8 (the last one short), calls of several batches.

STEP_ROWS, STEP_BATCH, STEP_SIZES = 23, 8, [7, 6, 5, 3]
STEP_CASES = {
    "relu, cross-entropy, Adam": ("relu", "cross_entropy", "labels",
                                  lambda p: mf.optim.Adam(p, lr=1e-2, weight_decay=1e-3)),
    "gelu, MSE targets, SGD Nesterov": ("gelu", "mse", "targets", lambda p: mf.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "sigmoid, cross-entropy, AdamW": ("sigmoid", "cross_entropy", "labels",
                                      lambda p: mf.optim.AdamW(p, lr=3e-2)),
    "tanh, MSE labels, plain SGD": ("tanh", "mse", "labels", lambda p: mf.optim.SGD(p, lr=0.3)),
    "leaky_relu, no biases, cross-entropy, SGD momentum": (
        "leaky_relu", "cross_entropy", "labels", lambda p: mf.optim.SGD(p, lr=0.1, momentum=0.5)),
}


def step_data(targets, rows=STEP_ROWS, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, STEP_SIZES[0])).astype(np.float32)
    if targets == "targets":
        return x, rng.standard_normal((rows, STEP_SIZES[-1])).astype(np.float32)
    return x, rng.integers(0, STEP_SIZES[-1], rows)


def make_train_step(backend, case, x, y, graph_device="auto", dataset=None):
    """(model, optimizer, step) of one STEP_CASES case; the same initial weights on every
    backend. On cuda the step is built directly when a graph device is given."""
    from mlpfast.backend.cpu import compiled_spec
    from mlpfast.backend.cuda_step import CudaStep
    from mlpfast.datasets import as_dataset
    activation, loss, _, make_optimizer = STEP_CASES[case]
    model = mf.MLP(STEP_SIZES, activation=activation, bias="no biases" not in case,
                   backend=backend, seed=1)
    optimizer = make_optimizer(model.parameters())
    loss_fn = mf.CrossEntropyLoss() if loss == "cross_entropy" else mf.MSELoss()
    dataset = dataset or as_dataset(model, x, y)
    if graph_device == "auto":
        step = model.backend.make_step(model.plan(), loss_fn, optimizer, dataset, STEP_BATCH)
    else:
        spec = compiled_spec(model.plan(), loss_fn, optimizer, dataset, lambda a: True)
        step = CudaStep(model.plan(), spec, optimizer, dataset, STEP_BATCH, graph_device)
    return model, optimizer, step


# (order seed, first batch, batches) per call: an epoch in calls of 2 + 1 (the short batch
# last), then an epoch in one call
STEP_CALLS = [(1, 0, 2), (1, 2, 1), (2, 0, 3)]


def run_calls(step, calls=STEP_CALLS):
    """The sums and (steps, finite, loss) of each call; learning rates vary per step."""
    sums, results = np.zeros(2), []
    for seed, first, count in calls:
        order = np.random.default_rng(seed).permutation(STEP_ROWS).astype(np.int64)
        lrs = step.optimizer.lr * (0.5 + 0.25 * np.arange(first, first + count))
        results.append(step.run(order, first, count, lrs, sums))
        yield sums.copy(), results[-1]


def assert_near(actual, expected, what, tol=(1e-5, 1e-4)):
    """assert_close, with NaN exactly where the reference has one (assert_close alone lets
    a NaN pass: NaN > 0 is False)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
    assert_close(actual, expected, tol=tol, what=what)


def state_of(model, optimizer):
    """Parameters, gradients and optimizer state as host arrays."""
    arrays = {"parameters": mf.to_numpy(model.flat_data), "gradients": mf.to_numpy(model.flat_grad)}
    arrays.update(optimizer.state_dict()["state"])
    return arrays


@pytest.mark.parametrize("case", STEP_CASES)
def test_cuda_step_trains_as_the_numpy_backend(case):
    x, y = step_data(STEP_CASES[case][2])
    (model, opt, step), (ref_model, ref_opt, ref_step) = (
        make_train_step(backend, case, x, y) for backend in ("cuda", "numpy"))
    assert type(step).__name__ == "CudaStep" and type(ref_step).__name__ == "LayerByLayerStep"
    for (sums, result), (ref_sums, ref_result) in zip(run_calls(step), run_calls(ref_step)):
        assert result == ref_result == (result[0], True, 0.0)
        assert_near(sums[0], ref_sums[0], f"{case}: summed loss")
        assert sums[1] == ref_sums[1], f"{case}: correct rows"
        assert opt.step_count == ref_opt.step_count
        ref_state = state_of(ref_model, ref_opt)
        for key, value in state_of(model, opt).items():    # gradients: of the call's last batch
            assert_near(value, ref_state[key], f"{case}: {key}")
    assert opt.step_count == 6 and (sums[1] > 0) == (STEP_CASES[case][2] == "labels")


def test_cuda_step_halves_match_the_numpy_backend():
    """compute_gradients + apply_update (data parallelism's split) against numpy's."""
    case = "relu, cross-entropy, Adam"
    x, y = step_data("labels")
    steps = [make_train_step(backend, case, x, y) for backend in ("cuda", "numpy")]
    index = np.array([5, 0, 22, 13, 7], np.int64)                 # a short batch
    (loss, correct), (ref_loss, ref_correct) = (s.compute_gradients(index) for _, _, s in steps)
    assert correct == ref_correct and abs(loss - ref_loss) <= 1e-6 + 1e-5 * abs(ref_loss)
    assert_near(mf.to_numpy(steps[0][0].flat_grad), mf.to_numpy(steps[1][0].flat_grad),
                "gradients", tol=(1e-6, 1e-4))
    for _, _, step in steps:
        step.apply_update(2e-2)
        step.compute_gradients(index[:1])
        step.apply_update(1e-2)
    (model, opt, _), (ref_model, ref_opt, _) = steps
    assert opt.step_count == ref_opt.step_count == 2
    ref_state = state_of(ref_model, ref_opt)
    for key, value in state_of(model, opt).items():
        assert_near(value, ref_state[key], key)


def test_cuda_step_reductions_count_every_row_and_block_once(rng):
    # the step's sum of squares over more values than its grid has threads, and its close
    # kernel over more rows and partial sums than its block has threads, against float64
    from mlpfast.kernels.cuda import mlp_step
    from mlpfast.kernels.cuda.mlp_step import (APPLIED, CORRECT_SUM, FAILED_LOSS, LAST_CORRECT,
                                               LAST_LOSS, LOSS_SUM, STOPPED)
    threads = mlp_step.CLOSE_THREADS
    values = rng.standard_normal(7 * 3 * threads + 5).astype(np.float32)
    partials = dev(np.full(3, np.nan))
    mlp_step.square_sums_kernel[3, mlp_step.THREADS_PER_BLOCK](dev(values), partials)
    squares = (values.astype(np.float64) ** 2).sum()
    assert abs(partials.copy_to_host().sum() - squares) <= 1e-5 * squares
    values[-1] = 2e19                          # its float32 square overflows: inf
    mlp_step.square_sums_kernel[3, mlp_step.THREADS_PER_BLOCK](dev(values), partials)
    assert np.isinf(partials.copy_to_host()).any()

    rows, blocks = 3 * threads + 5, 2 * threads + 7
    row_stats = np.stack([rng.random(rows), rng.integers(0, 2, rows)], axis=1)
    table = rng.random((4, mlp_step.SCALARS))
    loss, correct = row_stats[:, 0].sum(), row_stats[:, 1].sum()
    for bad in (None, np.inf, np.nan):
        square_partials = rng.random(blocks)
        if bad is not None:
            square_partials[1] = bad             # thread 1's first of three
        state = np.zeros(mlp_step.STATE_SIZE)
        state[[LOSS_SUM, CORRECT_SUM, APPLIED]] = 1.5, 2.0, 1.0
        state, progress, scalars = dev(state), dev(np.array([2])), dev(np.zeros(3))
        mlp_step.close_batch_kernel[1, threads](dev(row_stats), dev(square_partials), progress,
                                                state, dev(table), scalars)
        state = state.copy_to_host()
        assert abs(state[LAST_LOSS] - loss) <= 1e-12 * loss and state[LAST_CORRECT] == correct
        if bad is None:
            assert abs(state[LOSS_SUM] - 1.5 - loss) <= 1e-12 * loss
            assert state[[CORRECT_SUM, APPLIED, STOPPED]].tolist() == [2 + correct, 2, 0]
        else:                                    # stopped: nothing added, the mean loss kept
            assert state[[LOSS_SUM, CORRECT_SUM, APPLIED, STOPPED]].tolist() == [1.5, 2, 1, 1]
            assert abs(state[FAILED_LOSS] - loss / rows) <= 1e-12 * loss
        assert progress.copy_to_host()[0] == 3
        np.testing.assert_array_equal(scalars.copy_to_host(), table[2])


# cause -> (case, row 11 of x, first layer's weights made positive)
NON_FINITE = {
    "NaN loss": ("gelu, MSE targets, SGD Nesterov", 3e38, True),          # h_1 = inf, then
    "finite loss, NaN gradient": ("relu, cross-entropy, Adam", 1e38, True),   # inf - inf;
    "finite loss, gradient beyond 1.8e19": ("gelu, MSE targets, SGD Nesterov", 1e18, False),
}                   # relu turns that NaN to 0; a huge finite loss, gradients whose square
                    # overflows float32 (the cpu step's rule)


@pytest.mark.parametrize("cause", NON_FINITE)
def test_cuda_step_applies_nothing_from_a_non_finite_batch_on(cause):
    """A call of 3 batches whose second is not finite: the first is applied, nothing of the
    second or third; the failing batch's loss comes back and its gradients stay in
    flat_grad; through fit, TrainingDiverged names the step."""
    case, value, positive = NON_FINITE[cause]
    x, y = step_data(STEP_CASES[case][2])
    x[11] = value

    def build(backend):
        model, opt, step = make_train_step(backend, case, x, y)
        if positive:
            state = model.state_dict()
            state["0.weight"] = np.abs(state["0.weight"]) + 0.5
            model.load_state_dict(state)
        return model, opt, step

    runs = {}
    for backend in ("cuda", "numpy"):
        model, opt, step = build(backend)
        sums = np.zeros(2)
        result = step.run(np.arange(STEP_ROWS, dtype=np.int64), 0, 3, np.full(3, opt.lr), sums)
        runs[backend] = result, sums, state_of(model, opt), opt.step_count
    (result, sums, state, count), (ref_result, ref_sums, ref_state, ref_count) = \
        runs["cuda"], runs["numpy"]
    assert result[:2] == ref_result[:2] == (1, False) and count == ref_count == 1
    if cause == "NaN loss":
        assert np.isnan(result[2]) and np.isnan(ref_result[2])
    else:                                # the failing batch's gradients are kept
        with np.errstate(over="ignore", invalid="ignore"):        # a float32 square overflows
            assert np.isfinite(result[2]) and not np.isfinite(state["gradients"] ** 2).all()
        assert np.isnan(state["gradients"]).any() or "NaN" not in cause
        if np.isfinite(ref_result[2]):   # numpy's relu keeps a NaN (np.maximum), where the
            assert abs(result[2] / ref_result[2] - 1) < 1e-4      # cuda one gives 0
    assert_near(sums, ref_sums, "sums of the first batch only")
    for key in ("parameters", "exp_avg", "exp_avg_sq", "momentum_buffer"):
        if key in ref_state:
            assert_near(state[key], ref_state[key], key)
    model, opt, _ = build("cuda")
    loss_fn = mf.CrossEntropyLoss() if STEP_CASES[case][1] == "cross_entropy" else mf.MSELoss()
    with pytest.raises(mf.TrainingDiverged, match="step 2 of 3"):
        mf.fit(model, opt, loss_fn, x, y, epochs=1, batch_size=STEP_BATCH, shuffle=False,
               progress=False)
    assert opt.step_count == 1
    assert_near(mf.to_numpy(model.flat_data), ref_state["parameters"], "after fit")


class RecordingBuilder:
    """cuda.core's GraphBuilder interface: records the launches made with it as their stream
    (see recording_launches), completes into a ReplayGraph of them."""

    def __init__(self, device):
        self.device, self.recorded, self.building = device, [], False

    def begin_building(self):
        if self.device.refuse:
            raise RuntimeError("no graphs here")
        self.building = True
        return self

    def end_building(self):
        self.building = False
        return self

    def complete(self):
        return ReplayGraph(self.device, tuple(self.recorded))


class ReplayGraph:
    def __init__(self, device, launches):
        self.device, self.launches = device, launches

    def launch(self, stream):
        assert stream is self.device.default_stream
        self.device.replays += 1
        for launch in self.launches:
            launch(0)


class RecordingDevice:
    """A graph device (cuda.core's Device interface) that records instead of capturing."""
    default_stream = object()

    def __init__(self, refuse=False):
        self.builders, self.replays, self.refuse = [], 0, refuse

    def create_graph_builder(self):
        self.builders.append(RecordingBuilder(self))
        return self.builders[-1]


@pytest.fixture
def recording_launches(monkeypatch):
    """Launches made with a RecordingBuilder as their stream are recorded, not run."""
    from mlpfast.kernels.cuda import graphs
    run = graphs.Launch.__call__

    def launch(self, stream=0):
        if isinstance(stream, RecordingBuilder):
            assert stream.building
            stream.recorded.append(self)
        else:
            run(self, stream)
    monkeypatch.setattr(graphs.Launch, "__call__", launch)


def test_cuda_step_captures_each_batch_size_once_then_replays_it(recording_launches):
    """The first step of each batch size runs launch by launch, is then captured (every
    launch, in order), and the graph replays the later steps: results identical to the
    uncaptured steps, bit for bit (per-step values come from device memory)."""
    case = "sigmoid, cross-entropy, AdamW"
    x, y = step_data("labels")
    device = RecordingDevice()
    runs = [make_train_step("cuda", case, x, y, graph_device=graph_device)
            for graph_device in (None, device)]
    for (sums, result), (graph_sums, graph_result) in zip(run_calls(runs[0][2]),
                                                          run_calls(runs[1][2])):
        assert result == graph_result and np.array_equal(sums, graph_sums)
    graph_state = state_of(*runs[1][:2])
    for key, value in state_of(*runs[0][:2]).items():
        np.testing.assert_array_equal(graph_state[key], value)
    step = runs[1][2]
    plans = step._steps._plans
    assert sorted(plans) == [STEP_ROWS - 2 * STEP_BATCH, STEP_BATCH]
    for builder, rows in zip(device.builders, (8, 7)):      # every launch, in order
        assert len(builder.recorded) == len(plans[rows][0])
        assert all(a is b for a, b in zip(builder.recorded, plans[rows][0]))
    assert device.replays == 6 - 2 and step.graphs == "CUDA graph (2 batch sizes captured)"
    assert runs[0][2].graphs.startswith("kernel by kernel")


def test_a_launch_list_refuses_a_host_array_by_its_position():
    """A graph cannot capture the copies numba-cuda makes for a host array, so launch lists
    take device arrays and scalars only."""
    from mlpfast.kernels.cuda.graphs import Launch, check_launches
    kernel = object()
    device_ok = [Launch(kernel, 1, 32, (cuda.to_device(np.zeros(4, np.float32)), 3, 0.5))]
    check_launches(device_ok)
    host = Launch(kernel, 1, 32, (cuda.to_device(np.zeros(4, np.float32)), np.zeros((2, 3))))
    with pytest.raises(TypeError, match=r"argument 1 of a launch of .* is a host array "
                                        r"float64 \(2, 3\)"):
        check_launches(device_ok + [host])


def test_cuda_step_runs_kernel_by_kernel_when_capture_fails(recording_launches):
    case = "relu, cross-entropy, Adam"
    x, y = step_data("labels")
    model, opt, step = make_train_step("cuda", case, x, y, graph_device=RecordingDevice(True))
    ref_model, ref_opt, ref_step = make_train_step("cuda", case, x, y, graph_device=None)
    with pytest.warns(RuntimeWarning, match="could not be captured as a CUDA graph"):
        for (sums, result), (ref_sums, ref_result) in zip(run_calls(step), run_calls(ref_step)):
            assert result == ref_result and np.array_equal(sums, ref_sums)
    np.testing.assert_array_equal(mf.to_numpy(model.flat_data), mf.to_numpy(ref_model.flat_data))
    assert step.graphs == "kernel by kernel (RuntimeError: no graphs here)"


def test_cuda_step_checks_once_per_batch_size_and_allocates_nothing_per_step(monkeypatch):
    from mlpfast.kernels.cuda import mlp_step
    x, y = step_data("labels")
    model, opt, step = make_train_step("cuda", "relu, cross-entropy, Adam", x, y)
    built = []
    launches = mlp_step.CudaMLPSteps._launches
    monkeypatch.setattr(mlp_step.CudaMLPSteps, "_launches",
                        lambda self, rows: built.append(rows) or launches(self, rows))
    list(run_calls(step, STEP_CALLS[:2]))                 # every batch size once
    allocations = []
    for name in ("device_array", "to_device", "device_array_like"):
        allocate = getattr(cuda, name)
        monkeypatch.setattr(cuda, name, lambda *a, allocate=allocate, **k:
                            allocations.append(a) or allocate(*a, **k))
    list(run_calls(step, STEP_CALLS * 2))
    assert built == [8, 7] and not allocations


class RowsLike:
    """A dataset object (no arrays): gather_batch fills the caller's buffers."""

    def __init__(self, x, y, bad_label=None):
        self.x, self.y, self.bad_label = x, y, bad_label
        self.num_features, self.num_classes, self.gathered = x.shape[1], 3, 0

    def __len__(self):
        return len(self.x)

    def gather_batch(self, index, x_out, y_out):
        self.gathered += 1
        x_out[:] = self.x[index]
        y_out[:] = self.y[index] if self.bad_label is None else self.bad_label


def test_cuda_step_uploads_a_dataset_object_once_per_call():
    case = "leaky_relu, no biases, cross-entropy, SGD momentum"
    x, y = step_data("labels")
    rows = RowsLike(x, y)
    (model, opt, step), (ref_model, ref_opt, ref_step) = (
        make_train_step("cuda", case, x, y, dataset=dataset) for dataset in (rows, None))
    assert step.max_batches == 64 and ref_step.max_batches is None
    for (sums, result), (ref_sums, ref_result) in zip(run_calls(step), run_calls(ref_step)):
        assert result == ref_result and np.array_equal(sums, ref_sums)
    assert rows.gathered == len(STEP_CALLS)
    np.testing.assert_array_equal(mf.to_numpy(model.flat_data), mf.to_numpy(ref_model.flat_data))
    _, _, bad = make_train_step("cuda", case, x, y, dataset=RowsLike(x, y, bad_label=3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        bad.run(np.arange(STEP_ROWS), 0, 1, np.full(1, 0.1), np.zeros(2))


def test_cuda_step_rejects_bad_calls_before_changing_anything():
    x, y = step_data("labels")
    model, opt, step = make_train_step("cuda", "relu, cross-entropy, Adam", x, y)
    before, sums = mf.to_numpy(model.flat_data), np.zeros(2)
    bad_order = np.arange(STEP_ROWS, dtype=np.int64)
    bad_order[3] = STEP_ROWS
    with pytest.raises(ValueError, match=r"order must hold row numbers in \[0, 23\)"):
        step.run(bad_order, 0, 1, np.full(1, 0.1), sums)
    with pytest.raises(ValueError, match="lrs must hold one rate per step"):
        step.run(np.arange(STEP_ROWS), 0, 2, np.full(1, 0.1), sums)
    with pytest.raises(ValueError, match="batches must lie in order"):    # batch 2: rows 16-23
        step.run(np.arange(16, dtype=np.int64), 2, 1, np.full(1, 0.1), sums)
    with pytest.raises(ValueError, match="order must be a 1-D int64 array"):
        step.run(np.arange(STEP_ROWS, dtype=np.int32), 0, 1, np.full(1, 0.1), sums)
    with pytest.raises(ValueError, match=r"rows_index must be 1-D int64 with 1 to 8 rows"):
        step.compute_gradients(np.arange(9))
    np.testing.assert_array_equal(mf.to_numpy(model.flat_data), before)
    assert opt.step_count == 0 and not sums.any()


def test_cuda_falls_back_to_the_layer_by_layer_step_for_what_its_step_does_not_cover():
    from mlpfast.datasets import as_dataset
    x, y = step_data("labels")

    def kind(model, optimizer=None, loss_fn=None):
        optimizer = optimizer or mf.optim.SGD(model.parameters(), lr=0.1)
        return type(model.backend.make_step(model.plan(), loss_fn or mf.CrossEntropyLoss(),
                                            optimizer, as_dataset(model, x, y),
                                            STEP_BATCH)).__name__

    class ScaledLoss(mf.CrossEntropyLoss):
        pass
    sizes = STEP_SIZES
    for activation in ref_activations.ELEMENTWISE:
        assert kind(mf.MLP(sizes, activation=activation, backend="cuda")) == "CudaStep"
    assert kind(mf.MLP(sizes, bias=False, backend="cuda")) == "CudaStep"
    model = mf.MLP(sizes, backend="cuda")
    for other in (mf.MLP(sizes, batchnorm=True, backend="cuda"),
                  mf.MLP(sizes, dropout=0.2, backend="cuda"),
                  mf.MLP(sizes, input_dropout=0.2, backend="cuda"),
                  mf.MLP(sizes, backend="cuda", dtype=np.float64),
                  mf.Sequential(mf.Linear(7, 3), mf.Softmax())):
        assert kind(other) == "LayerByLayerStep"
    assert kind(model, mf.optim.SGD(model.parameters(), lr=0.1, max_norm=1.0)) == \
        "LayerByLayerStep"
    assert kind(model, loss_fn=ScaledLoss()) == "LayerByLayerStep"


# --- the strict device array: refuses what a GPU's DeviceNDArray refuses -------------------------
# On a GPU these run against numba-cuda's own DeviceNDArray, which must refuse the same.

def test_device_arrays_refuse_what_numba_cuda_refuses():
    a = dev(np.arange(12, dtype=np.float32).reshape(3, 4))
    for key in (Ellipsis, (Ellipsis, 0), None, (0, None), [0, 2], np.array([0, 2]),
                np.array([True, False, True])):
        with pytest.raises(TypeError):
            a[key]
        with pytest.raises(TypeError):
            a[key] = 0
    with pytest.raises(IndexError):
        a[0, 1, 2]
    for operation in (lambda: a + 1, lambda: 2 * a, lambda: -a, lambda: a @ a):
        with pytest.raises(TypeError):
            operation()
    for method in ("fill", "sum", "astype", "copy", "max"):
        assert not hasattr(a, method), method
    with pytest.raises(NotImplementedError, match="copying"):
        a[:, 1:3].reshape(6)                              # rows not contiguous: needs a copy
    with pytest.raises(NotImplementedError, match="copying"):
        a[:, 1:3].reshape(3, 1, 2)        # NumPy has a view; numba-cuda reshapes no strided array
    with pytest.raises(NotImplementedError):
        a[:, :2].ravel()
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(ValueError, match="incompatible strides"):
        a.copy_to_device(cuda.to_device(np.asfortranarray(host)))     # F order into C order
    with pytest.raises(ValueError, match="incompatible shape"):
        a.copy_to_device(dev(host.T))
    with pytest.raises(TypeError, match="incompatible dtype"):
        a.copy_to_device(dev(host.astype(np.float64)))
    with pytest.raises(ValueError, match="incompatible shape"):
        a.copy_to_device(host[:2])
    if simulator_enabled():                               # the real one copies to the host here
        for operation in (lambda: np.asarray(a), lambda: np.isfinite(a), lambda: np.sum(a),
                          lambda: a == 0, lambda: a[True]):
            with pytest.raises(TypeError):
                operation()

        @cuda.jit
        def first_to_one(out):
            out[0] = 1.0
        with pytest.raises(TypeError, match="argument 0 is a host array"):
            first_to_one[1, 1](np.zeros(3, np.float32))   # a GPU copies it both ways instead
        for grid, block in (((1, 65536), 1), (0, 1), (1, 1025), (1, (2, 2, 65)),
                            (1, (32, 33))):
            with pytest.raises(ValueError, match="exceed what a GPU launches"):
                first_to_one[grid, block](a[0])
        first_to_one[1, 1](a[0])
        assert a[0, 0] == 1.0

        @cuda.jit
        def halves(out, diverge):
            # out[0] = the sum of 0..3 by a tree; with diverge, only the summing threads
            # wait at the barrier (as a GPU cannot: the other two never reach it)
            cache = cuda.shared.array(4, types.float64)
            tid = cuda.threadIdx.x
            cache[tid] = tid
            cuda.syncthreads()
            if tid < 2:
                cache[tid] += cache[tid + 2]
                if diverge:
                    cuda.syncthreads()
            if not diverge:
                cuda.syncthreads()
            if tid == 0:
                out[0] = cache[0] + cache[1]
        halves[1, 4](a[0], False)
        assert a[0, 0] == 6.0
        with pytest.raises(RuntimeError, match="passed 1 or 2 syncthreads"):
            halves[1, 4](a[0], True)


def test_device_arrays_accept_what_numba_cuda_accepts():
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = dev(host)
    assert a[1, 2] == host[1, 2] and a[np.int64(2), -1] == host[2, -1]
    np.testing.assert_array_equal(a[1:, ::2].copy_to_host(), host[1:, ::2])
    np.testing.assert_array_equal(a[1].copy_to_host(), host[1])
    np.testing.assert_array_equal(a[1:3].reshape(8).copy_to_host(), host[1:3].reshape(8))
    np.testing.assert_array_equal(a.T.copy_to_host(), host.T)
    a[0] = 7.0
    a[1, :] = np.full(4, 8, np.float32)
    a[2] = dev(np.full(4, 9, np.float32))
    np.testing.assert_array_equal(a.copy_to_host(), np.repeat([[7.0], [8.0], [9.0]], 4, axis=1))
    a.copy_to_device(host)
    b = dev(np.zeros((3, 4), np.float32))
    b.copy_to_device(a)                                   # device to device
    np.testing.assert_array_equal(b.copy_to_host(), host)
    assert len(b) == 3 and b.size == 12 and b.ndim == 2 and b.dtype == np.float32
    assert b.is_c_contiguous() and "__cuda_array_interface__" in dir(type(b))
    assert cuda.to_device(host, to=b) is b and cuda.to_device(a, to=b) is b
    fortran = cuda.device_array_like(cuda.to_device(np.asfortranarray(host)))
    assert fortran.is_f_contiguous() and not fortran.is_c_contiguous()      # its order kept


@pytest.mark.skipif(not simulator_enabled(), reason="checks the simulator's stand-in")
def test_simulated_device_arrays_start_as_garbage_not_zeros():
    # a GPU's fresh allocation holds whatever was there; the stand-in's holds NaN or 0x7F
    assert np.isnan(cuda.device_array((3, 5), np.float32).copy_to_host()).all()
    assert np.isnan(cuda.device_array_like(np.zeros(4)).copy_to_host()).all()
    assert (cuda.device_array(2, np.int64).copy_to_host() == 0x7F7F7F7F7F7F7F7F).all()
    assert (cuda.device_array(2, np.uint8).copy_to_host() == 0x7F).all()
    assert cuda.device_array(2, np.bool_).copy_to_host().all()
    np.testing.assert_array_equal(dev(np.zeros(3)).copy_to_host(), 0.0)   # copies stay exact


@pytest.mark.skipif(not simulator_enabled(), reason="checks the simulator's race checker")
def test_the_simulator_refuses_data_races():
    from race_checker import DataRace, UninitializedRead
    out = dev(np.zeros(8))

    @cuda.jit
    def tree_sum(out, with_barrier):
        # out[0] = 0 + 1 + ... + 7 by a tree in shared memory; a barrier after each level
        cache = cuda.shared.array(8, types.float64)
        tid = cuda.threadIdx.x
        cache[tid] = tid
        cuda.syncthreads()
        half = 4
        while half > 0:
            if tid < half:
                cache[tid] += cache[tid + half]
            if with_barrier:
                cuda.syncthreads()
            half //= 2
        if tid == 0:
            out[0] = cache[0]
    tree_sum[1, 8](out, True)
    assert out.copy_to_host()[0] == 28.0
    with pytest.raises(DataRace, match=r"kernel tree_sum: data race at \[\d\] of a shared "
                                       r"float64 array of shape \(8,\): a (read|write) by "
                                       r"thread \d of block 0 after 1 syncthreads\(\) and an "
                                       r"earlier (read|write) by (thread \d|several threads) "
                                       r"of block 0 after 1 syncthreads\(\), no syncthreads"):
        tree_sum[1, 8](out, False)

    @cuda.jit
    def staged_sum(src, out, trailing_barrier):
        # out[tid] = sum over tiles t of src[t, (tid + 1) % 4], through one shared tile: the
        # next tile's store must wait until every thread has read this one
        tile = cuda.shared.array(4, types.float64)
        tid = cuda.threadIdx.x
        total = 0.0
        for t in range(src.shape[0]):
            tile[tid] = src[t, tid]
            cuda.syncthreads()
            total += tile[(tid + 1) % 4]
            if trailing_barrier:
                cuda.syncthreads()
        out[tid] = total
    src = np.arange(12.0).reshape(3, 4)
    staged_sum[1, 4](dev(src), out, True)
    np.testing.assert_array_equal(out.copy_to_host()[:4], np.roll(src.sum(axis=0), -1))
    with pytest.raises(DataRace, match=r"a (read|write) by thread \d of block 0 after 1 "
                                       r"syncthreads\(\) and an earlier (read|write) by thread "
                                       r"\d of block 0 after 1 syncthreads\(\), no syncthreads"):
        staged_sum[1, 4](dev(src), out, False)

    @cuda.jit
    def next_block_reads(out, barrier_first):
        # block 0 writes out[0], block 1 reads it: no barrier orders two blocks
        if barrier_first:
            cuda.syncthreads()
        if cuda.blockIdx.x == 0:
            out[0] = 5.0
        else:
            out[1] = out[0]
    for barrier_first in (False, True):
        with pytest.raises(DataRace, match=r"kernel next_block_reads: data race at \[0\] of a "
                                           r"global float64 array of shape \(8,\): a read by "
                                           r"thread 0 of block 1 .* blocks of one launch run "
                                           r"in no fixed order"):
            next_block_reads[2, 1](out, barrier_first)

    @cuda.jit
    def all_write_one(out):
        out[0] = cuda.threadIdx.x
    with pytest.raises(DataRace, match=r"a write by thread \d of block 0 after 0 "
                                       r"syncthreads\(\) and an earlier write by thread \d"):
        all_write_one[1, 2](out)

    @cuda.jit
    def atomic_count(out, read_at_once):
        # out[0] += 1 from every thread of every block, atomically; shared likewise
        count = cuda.shared.array(1, types.float64)
        tid = cuda.threadIdx.x
        if tid == 0:
            count[0] = 0.0
        cuda.syncthreads()
        cuda.atomic.add(count, 0, 1.0)
        cuda.atomic.add(out, 0, 1.0)
        if read_at_once and tid == 1:
            out[1] = count[0]               # other threads may still be adding
        cuda.syncthreads()
        if tid == 0:
            out[2 + cuda.blockIdx.x] = count[0]
    out.copy_to_device(np.zeros(8))
    atomic_count[3, 4](out, False)
    np.testing.assert_array_equal(out.copy_to_host()[:5], [12, 0, 4, 4, 4])
    with pytest.raises(DataRace, match=r"shared float64 array of shape \(1,\): .*atomic write"):
        atomic_count[3, 4](out, True)

    @cuda.jit
    def shifted_copy(src, dst):
        # dst[i] = src[i]: here two views of one buffer, 2 elements apart
        i = cuda.threadIdx.x
        dst[i] = src[i]
    buffer = dev(np.arange(6.0))
    shifted_copy[1, 2](buffer[0:2], buffer[4:6])           # disjoint: no race
    np.testing.assert_array_equal(buffer.copy_to_host(), [0, 1, 2, 3, 0, 1])
    with pytest.raises(DataRace, match=r"global float64 array of shape \(4,\)"):
        shifted_copy[1, 4](buffer[0:4], buffer[2:6])       # thread 0 writes what 2 reads

    @cuda.jit
    def reversed_copy(out, write_all):
        # out[tid] = tid' for tid' = 3 - tid, through shared memory
        cache = cuda.shared.array(4, types.float64)
        tid = cuda.threadIdx.x
        if write_all or tid < 3:
            cache[tid] = tid
        cuda.syncthreads()
        out[tid] = cache[3 - tid]
    reversed_copy[1, 4](out, True)
    np.testing.assert_array_equal(out.copy_to_host()[:4], [3, 2, 1, 0])
    with pytest.raises(UninitializedRead, match=r"kernel reversed_copy: thread 0 of block 0 "
                                                r"after 1 syncthreads\(\) reads \[3\] of a "
                                                r"shared float64 array of shape \(4,\), which "
                                                r"no thread of the block wrote"):
        reversed_copy[1, 4](out, False)

    @cuda.jit
    def everyone_reads(src, out):
        out[cuda.blockIdx.x * 2 + cuda.threadIdx.x] = src[0] + src[0]
    everyone_reads[2, 2](dev(np.full(1, 3.0)), out)
    np.testing.assert_array_equal(out.copy_to_host()[:4], [6, 6, 6, 6])


# --- bench/gpu_check.py --quick: the script a GPU run relies on, smoke-tested here ------------

def load_gpu_check():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench",
                        "gpu_check.py")
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_gpu_check_quick_runs_every_check(capsys):
    status = load_gpu_check().main(["--quick"])
    out = capsys.readouterr().out
    assert "ERROR" not in out and "MISMATCH" not in out, out
    assert status == 0 and " 0 mismatches or failed checks" in out, out
    for row in ("linear_grad_input tanh'", "split-K 3", "MNIST-like b16 epoch s",
                "cuda step: graph replay vs kernel by kernel", "cuda step us/step",
                "wide-like b32 epoch s", "mlpfast train mnist", "bars (issue 16)",
                "sgemm 4096^3 vs cuBLAS fp32", "wide b1024 epoch vs JAX jit"):
        assert row in out, row


def test_gpu_check_skips_the_train_mnist_rows_without_mnist(tmp_path):
    # a GPU machine without a network has no MNIST unless --mnist gives it: the rows say
    # skipped and count no failure (they ran the CLI, which failed, and gpu_check exited 1)
    gpu_check = load_gpu_check()
    table = gpu_check.Table()
    gpu_check.run_check(table, gpu_check.train_mnist_cli, gpu_check.SIZES["full"],
                        np.random.default_rng(0), str(tmp_path))
    assert table.failures == 0 and "train gap" not in table.measured, table.rows
    assert "skipped: no MNIST files here, pass --mnist DIR" in table.rows[-1][-1]


# --- loose ends: the step's buffers, backend.assign, overlap extents, dropout's threshold -------

def test_cuda_step_takes_an_order_longer_than_the_dataset_after_its_launches_exist():
    """A call whose rows outnumber the dataset's (two epochs' orders end to end, 5 batches =
    40 rows > 23) grows the step's device order buffer; the launch lists built by an earlier
    call read the old buffer, so they must be rebuilt: the parameters then follow the numpy
    backend over the same rows."""
    case = "relu, cross-entropy, Adam"
    x, y = step_data("labels")
    (model, opt, step), (ref_model, ref_opt, ref_step) = (
        make_train_step(backend, case, x, y) for backend in ("cuda", "numpy"))
    rng = np.random.default_rng(4)
    long_order = np.concatenate([rng.permutation(STEP_ROWS), rng.permutation(STEP_ROWS)])
    for order, count in ((np.arange(STEP_ROWS, dtype=np.int64)[::-1].copy(), 2),
                         (long_order.astype(np.int64), 5)):
        lrs = np.full(count, 1e-2)
        sums, ref_sums = np.zeros(2), np.zeros(2)
        assert step.run(order, 0, count, lrs, sums) == ref_step.run(order, 0, count, lrs,
                                                                     ref_sums) == (count, True, 0.0)
        assert_near(sums[0], ref_sums[0], "summed loss")
        ref_state = state_of(ref_model, ref_opt)
        for key, value in state_of(model, opt).items():
            assert_near(value, ref_state[key], f"{key} after {count} batches")


def test_cuda_step_first_sgd_step_takes_the_gradient_as_the_momentum_buffer():
    """Step 1 of SGD with momentum sets buf = g whatever the buffer holds (torch's rule; the
    step's table of optimizer scalars flags t = 1): a NaN buffer leaves no trace, on the
    compiled step as on the numpy backend."""
    case = "leaky_relu, no biases, cross-entropy, SGD momentum"
    x, y = step_data("labels")
    runs = []
    for backend in ("cuda", "numpy"):
        model, opt, step = make_train_step(backend, case, x, y)
        buffer = opt.state_arrays()["momentum_buffer"]
        model.backend.assign(buffer, np.full(buffer.shape, np.nan, np.float32))
        sums = np.zeros(2)
        assert step.run(np.arange(STEP_ROWS, dtype=np.int64), 0, 2, np.full(2, 0.1),
                        sums) == (2, True, 0.0)
        runs.append(state_of(model, opt))
    for key, value in runs[0].items():
        assert np.isfinite(value).all(), key
        assert_near(value, runs[1][key], key)


def test_cuda_step_load_rows_refuses_more_rows_than_it_holds():
    from mlpfast.kernels.cuda.mlp_step import CudaMLPSteps
    x, y = step_data("labels")
    _, _, step = make_train_step("cuda", "relu, cross-entropy, Adam", x, y)
    steps = step._steps
    assert isinstance(steps, CudaMLPSteps)
    more_x, more_y = np.zeros((STEP_ROWS + 1, STEP_SIZES[0]), np.float32), \
        np.zeros(STEP_ROWS + 1, np.int64)
    with pytest.raises(ValueError, match=f"src_x holds at most {STEP_ROWS} rows here, got 24"):
        steps.load_rows(more_x, more_y)
    np.testing.assert_array_equal(steps._src_x.copy_to_host(), x)
    steps.load_rows(x[:3][::-1].copy(), y[:3][::-1].copy())          # fewer rows: the first
    np.testing.assert_array_equal(steps._src_x.copy_to_host()[:3], x[:3][::-1])
    np.testing.assert_array_equal(steps._src_x.copy_to_host()[3:], x[3:])


@pytest.mark.parametrize("backend", ["cuda", "numpy"])
def test_backend_assign_casts_a_host_array_to_the_targets_dtype(backend):
    """backend.assign(dst, src) with a float64 host src: dst keeps its float32 dtype and
    takes src's values rounded to float32, as np.copyto does on the CPU backends."""
    b = mf.get_backend(backend)
    values = np.arange(7) / 3.0
    dst = b.zeros((7,), dtype=np.float32)
    b.assign(dst, values)
    got = mf.to_numpy(dst)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values.astype(np.float32))


class _Interface:
    """A device array of another library (CuPy, PyTorch), seen through its
    __cuda_array_interface__: data pointer, shape, byte strides (None: C-contiguous)."""

    def __init__(self, pointer, shape, strides=None):
        self.shape, self.dtype, self.ndim = shape, np.dtype(np.float32), len(shape)
        self.__cuda_array_interface__ = {"data": (pointer, False), "shape": shape,
                                         "strides": strides, "typestr": "<f4", "version": 3}


def test_overlap_extents_of_arrays_with_negative_strides():
    """_extent of a reversed view (stride -4 bytes over 4 floats, pointer at its last float)
    spans [pointer - 12, pointer + 4): arrays that end at its first byte or start at its
    end touch it without overlapping; one that shares a float overlaps."""
    from mlpfast.kernels.cuda._device import _extent, overlaps
    reversed_view = _Interface(1012, (4,), (-4,))
    assert _extent(reversed_view) == (1000, 1016)
    assert _extent(_Interface(1024, (3, 2), (-8, -4))) == (1004, 1028)
    assert not overlaps(reversed_view, _Interface(996, (1,)))
    assert not overlaps(reversed_view, _Interface(1016, (2,)))
    assert overlaps(reversed_view, _Interface(998, (1,)))
    assert overlaps(reversed_view, _Interface(1012, (1,)))


def test_dropout_keeps_an_element_whose_bits_equal_the_threshold():
    """keep_i = u_i >= round(p 2^32) against philox_ref (Random123's Philox written in
    test_kernels_dropout.py): p = u_i / 2^32 keeps element i, p = (u_i + 0.75) / 2^32 drops
    it, for each of a Philox block's 4 words and one in a later block; seed and step past
    2^32."""
    from test_kernels_dropout import _philox_word
    forward = dropout.VARIANTS["cuda"]["dropout_forward"]
    x = np.random.default_rng(3).standard_normal((3, 7)).astype(np.float32)
    seed, step, layer = 2 ** 32 + 77, 2 ** 32 + 3, 6
    bits = [_philox_word(i, seed, step, layer) for i in range(21)]
    for i in (0, 1, 2, 3, 13):
        for p, threshold in ((bits[i] / 2 ** 32, bits[i]), ((bits[i] + 0.75) / 2 ** 32,
                                                            bits[i] + 1)):
            y, keep = forward(dev(x), p, seed, step, layer)
            want = np.array([u >= threshold for u in bits], np.uint8).reshape(x.shape)
            assert want.reshape(-1)[i] == (threshold == bits[i])
            np.testing.assert_array_equal(keep.copy_to_host(), want, err_msg=f"{i} {p}")
            np.testing.assert_array_equal(y.copy_to_host(),
                                          np.where(want == 1, x * np.float32(1 / (1 - p)), 0))

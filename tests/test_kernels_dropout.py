"""Dropout kernels: Philox-4x32-10 against Random123's known answers, every variant's mask
and output against the NumPy reference, keep fraction and scaling, backward with the same
mask against the reference and finite differences."""
import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, assert_close, numerical_grad

from mlpfast.kernels import dropout

VARIANTS = list(dropout.VARIANTS)
U = np.uint64

# Random123's kat_vectors for philox4x32_10: (counter, key) -> output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


WORD = 0xFFFFFFFF


def philox_ref(counter, key):
    """Philox-4x32-10 written here from Random123's philox.h, on Python integers (the outside
    reference: it shares no code with kernels/dropout.py): a round multiplies counter words
    0 and 2 by M0 and M1 into 64-bit products (hi, lo) and gives (hi1 ^ c1 ^ k0, lo1, hi0 ^
    c3 ^ k1, lo0); the key gains (W0, W1) before each round after the first."""
    (c0, c1, c2, c3), (k0, k1) = counter, key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & WORD, (k1 + 0xBB67AE85) & WORD
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & WORD, (p0 >> 32) ^ c3 ^ k1, p0 & WORD
    return c0, c1, c2, c3


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    assert philox_ref(counter, key) == expected
    args = [U(v) for v in counter + key]
    assert [int(w) for w in dropout.philox4x32_10(*args)] == list(expected)
    assert [int(w) for w in dropout._philox_numba(*args)] == list(expected)
    as_arrays = dropout.philox4x32_10(np.array([U(counter[0])] * 3), *args[1:])
    assert [[int(v) for v in w] for w in as_arrays] == [[e] * 3 for e in expected]


SHAPES = [(1, 1), (1, 7), (3, 5), (13, 17), (0, 4), (64, 129)]
STREAMS = [(0.5, 0, 0, 0), (0.2, 12345, 7, 3), (0.9, 2 ** 64 - 1, 2 ** 40 + 5, 2 ** 32 - 1)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p,seed,step,layer", STREAMS)
def test_forward_matches_reference(variant, dtype, p, seed, step, layer, rng):
    ops = dropout.VARIANTS[variant]
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(dtype)
        y_ref, keep_ref = dropout.forward_ref(x, p, seed, step, layer)
        y, keep = ops["dropout_forward"](x, p, seed, step, layer)
        np.testing.assert_array_equal(keep, keep_ref, err_msg=f"{variant} mask {shape}")
        np.testing.assert_array_equal(y, y_ref, err_msg=f"{variant} output {shape}")
        np.testing.assert_array_equal(ops["dropout_mask"](shape, p, seed, step, layer), keep_ref)
        scale = dtype(1 / (1 - p))
        np.testing.assert_array_equal(y, np.where(keep_ref == 1, x * scale, 0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_mask_is_a_function_of_the_element_index_only(variant, rng):
    ops = dropout.VARIANTS[variant]
    keep = ops["dropout_mask"]((11, 23), 0.4, 9, 2, 1)
    np.testing.assert_array_equal(keep.reshape(1, -1), ops["dropout_mask"]((1, 253), 0.4, 9, 2, 1))
    wide = rng.standard_normal((11, 46)).astype(np.float32)
    view = wide[:, ::2]                                   # strided rows and columns
    out = np.full((11, 40), np.nan, np.float32)[:, 3:26]  # a strided output
    y, view_keep = ops["dropout_forward"](view, 0.4, 9, 2, 1, out=out)
    np.testing.assert_array_equal(view_keep, keep)
    np.testing.assert_array_equal(y, dropout.forward_ref(np.ascontiguousarray(view), 0.4, 9, 2,
                                                         1)[0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_fraction_within_three_standard_errors(variant, p):
    n = 1000 * 1000
    keep = dropout.VARIANTS[variant]["dropout_mask"]((1000, 1000), p, 2024, 17, 4)
    standard_error = np.sqrt(p * (1 - p) / n)
    assert abs(keep.mean() - (1 - p)) < 3 * standard_error
    columns = keep.mean(axis=0)                  # no column (feature) favoured
    assert abs(columns.std() - np.sqrt(p * (1 - p) / 1000)) < 0.1 * np.sqrt(p * (1 - p) / 1000)


@pytest.mark.parametrize("variant", VARIANTS)
def test_masks_differ_across_seed_step_and_layer(variant):
    mask = dropout.VARIANTS[variant]["dropout_mask"]
    base = mask((200, 50), 0.5, 1, 0, 0)
    for other in (mask((200, 50), 0.5, 2, 0, 0), mask((200, 50), 0.5, 1, 1, 0),
                  mask((200, 50), 0.5, 1, 0, 1), mask((200, 50), 0.5, 1, 2 ** 32, 0)):
        agreement = (other == base).mean()          # independent halves agree half the time
        assert 0.47 < agreement < 0.53
    np.testing.assert_array_equal(mask((200, 50), 0.5, 1, 0, 0), base)


@pytest.mark.parametrize("variant", VARIANTS)
def test_extreme_rates(variant, rng):
    forward = dropout.VARIANTS[variant]["dropout_forward"]
    x = rng.standard_normal((5, 9)).astype(np.float32)
    y, keep = forward(x, 0.0, 3, 4, 5)
    assert keep.all() and np.array_equal(y, x)
    y, keep = forward(x, 1.0, 3, 4, 5)
    assert not keep.any() and not y.any()
    y, keep = forward(x, 1 - 2 ** -34, 3, 4, 5)          # t = round(2^32 - 1/4) = 2^32
    assert not keep.any() and not y.any()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_uses_the_forward_mask(variant, dtype, rng):
    ops = dropout.VARIANTS[variant]
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        _, keep = ops["dropout_forward"](x, 0.3, 77, 5, 2)
        grad_x = ops["dropout_backward"](g, keep, 0.3)
        np.testing.assert_array_equal(grad_x, dropout.backward_ref(g, keep, 0.3))
        np.testing.assert_array_equal(grad_x, np.where(keep == 1, g * dtype(1 / 0.7), 0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_matches_finite_differences(variant, rng):
    ops = dropout.VARIANTS[variant]
    x, g = rng.standard_normal((4, 7)), rng.standard_normal((4, 7))
    _, keep = ops["dropout_forward"](x, 0.4, 5, 6, 7)
    numeric = numerical_grad(lambda: float((ops["dropout_forward"](x, 0.4, 5, 6, 7)[0] * g).sum()),
                             x)
    assert_close(ops["dropout_backward"](g, keep, 0.4), numeric, tol=GRAD_TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_input_is_named_and_writes_nothing(variant):
    ops = dropout.VARIANTS[variant]
    x = np.ones((3, 4), np.float32)
    out = np.full((3, 4), 7.0, np.float32)
    cases = [
        (lambda: ops["dropout_forward"](x, 1.5, 0, 0, 0, out=out), ValueError, "p must be"),
        (lambda: ops["dropout_forward"](x, 0.5, -1, 0, 0, out=out), ValueError, "seed must be"),
        (lambda: ops["dropout_forward"](x, 0.5, 0, 2 ** 64, 0, out=out), ValueError,
         "step must be"),
        (lambda: ops["dropout_forward"](x, 0.5, 0, 0, 2 ** 32, out=out), ValueError,
         "layer must be"),
        (lambda: ops["dropout_forward"](x.astype(int), 0.5, 0, 0, 0), TypeError, "x must be float"),
        (lambda: ops["dropout_forward"](x, 0.5, 0, 0, 0, out=x), ValueError, "overlap"),
        (lambda: ops["dropout_forward"](x[0], 0.5, 0, 0, 0), ValueError, "2-D"),
        (lambda: ops["dropout_backward"](x, np.ones((3, 4), bool), 0.5, out=out), ValueError,
         "keep must be the uint8 mask"),
        (lambda: ops["dropout_mask"]((3,), 0.5, 0, 0, 0), ValueError, "2-D"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert (out == 7).all()


C_SHAPES = [(1, 1), (3, 5), (7, 13), (64, 129), (5, 4099), (256, 784)]   # 2 threads: last
SHAPE_ERROR = -1                                                          # MLPF_ERR_SHAPE


def check_c_dropout(ffi, lib, rng):
    """mlpf_sdropout of the C library (ffi, lib) against forward_ref, bit for bit: with and
    without the keep mask, in place, on 1 and 2 threads, p from 0 to 1; bad sizes refused."""
    def call(x, out, keep, rows, cols, words, scale):
        pointer = (lambda a, t: ffi.cast(t, a.ctypes.data) if a is not None else ffi.NULL)
        return lib.mlpf_sdropout(pointer(x, "float *"), pointer(out, "float *"),
                                 pointer(keep, "uint8_t *"), rows, cols, *words, scale)

    previous = lib.mlpf_get_num_threads()
    try:
        for count in (1, 2):
            lib.mlpf_set_num_threads(count)
            for shape in C_SHAPES:
                for p, seed, step, layer in STREAMS + [(0.0, 1, 2, 3), (1.0, 1, 2, 3),
                                                        (1 - 2 ** -34, 1, 2, 3)]:   # t = 2^32
                    x = rng.standard_normal(shape).astype(np.float32)
                    want, want_keep = dropout.forward_ref(x, p, seed, step, layer)
                    threshold, k0, k1, c1, c2, c3 = dropout.stream(p, seed, step, layer)
                    words = [int(w) for w in (threshold, k0, k1, c1, c2, c3)]
                    scale = float(dropout.scale_for(p, np.float32))
                    out, keep = np.full_like(x, np.nan), np.full(shape, 7, np.uint8)
                    assert call(x, out, keep, *shape, words, scale) == 0
                    assert np.array_equal(keep, want_keep), (count, shape, p)
                    assert np.array_equal(out, want), (count, shape, p)
                    assert call(x, x, None, *shape, words, scale) == 0      # in place
                    assert np.array_equal(x, want), (count, shape, p)
        x = np.ones((1, 4), np.float32)         # refused before any element is touched:
        assert call(x, x, None, 2 ** 30 + 1, 2 ** 4, [0] * 6, 1.0) == SHAPE_ERROR  # > 2^34
        assert call(x, x, None, 1, 4, [2 ** 32 + 1] + [0] * 5, 1.0) == SHAPE_ERROR
        assert call(x, x, None, -1, 4, [0] * 6, 1.0) == SHAPE_ERROR
        assert np.array_equal(x, np.ones((1, 4), np.float32))
    finally:
        lib.mlpf_set_num_threads(previous)


def test_c_dropout_matches_the_reference(rng):
    """The compiled cpu step draws its masks with mlpf_sdropout (the AVX-512 path on this
    CPU where it has AVX512-BW; the portable build's loop in test_cgemm.py)."""
    from mlpfast.kernels._c_library import c_available, c_library
    if not c_available():
        pytest.skip("the C library is not built")
    check_c_dropout(c_library().ffi, c_library().lib, rng)


def _philox_word(i, seed, step, layer):
    """u_i of the module docstring, from philox_ref (checked against Random123 above):
    word i mod 4 of the block with counter (i div 4, layer, step mod 2^32, step div 2^32)
    and key (seed mod 2^32, seed div 2^32)."""
    return philox_ref((i // 4, layer, step % 2 ** 32, step >> 32),
                      (seed % 2 ** 32, seed >> 32))[i % 4]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("p,seed,step,layer", [(0.3, 2 ** 40 + 7, 2 ** 33 + 3, 5),
                                               (0.5, 2 ** 32, 1, 0), (0.7, 99, 0, 2 ** 31),
                                               (0.6, 2 ** 64 - 2 ** 31 + 3, 2 ** 64 - 5, 7)])
def test_mask_is_the_documented_function_of_counter_and_key(variant, p, seed, step, layer):
    """keep_i = u_i >= round(p 2^32), element by element, with seeds and steps past 2^32
    and past 2^63 (their high words' top bit set): the reference and the kernels share
    stream(), so a key without the seed's high word (seeds s and s + 2^32 drawing one mask),
    or a high word of seed or step cut to 31 bits, passed every comparison between them."""
    keep = dropout.VARIANTS[variant]["dropout_mask"]((3, 7), p, seed, step, layer)
    threshold = round(p * 2 ** 32)
    expected = [_philox_word(i, seed, step, layer) >= threshold for i in range(21)]
    np.testing.assert_array_equal(keep.reshape(-1), np.array(expected, np.uint8))


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_element_whose_bits_equal_the_threshold_is_kept(variant, rng):
    """keep_i = u_i >= t, not u_i > t: with p = u_0 / 2^32 (exact in float64), t = u_0 and
    element 0 is kept; with p = (u_0 + 1) / 2^32 it is dropped."""
    x = rng.standard_normal((2, 5)).astype(np.float32)
    u0 = _philox_word(0, 11, 3, 1)
    for p, kept in ((u0 / 2 ** 32, 1), ((u0 + 1) / 2 ** 32, 0)):
        y, keep = dropout.VARIANTS[variant]["dropout_forward"](x, p, 11, 3, 1)
        assert keep[0, 0] == kept
        assert y[0, 0] == (x[0, 0] * dropout.scale_for(p, np.float32) if kept else 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_threshold_is_p_2_32_rounded_to_nearest(variant, rng):
    """t = round(p 2^32), not its floor: with u_0 the first element's bits, p = (u_0 + 0.75)
    / 2^32 gives t = u_0 + 1 (dropped) and p = (u_0 + 0.25) / 2^32 gives t = u_0 (kept);
    each p is exact in float64. The whole mask against philox_ref."""
    x = rng.standard_normal((3, 5)).astype(np.float32)
    seed, step, layer = 2 ** 33 + 5, 9, 4
    bits = [_philox_word(i, seed, step, layer) for i in range(15)]
    for fraction, kept in ((0.75, 0), (0.25, 1)):
        p = (bits[0] + fraction) / 2 ** 32
        y, keep = dropout.VARIANTS[variant]["dropout_forward"](x, p, seed, step, layer)
        threshold = bits[0] + 1 - kept
        assert keep[0, 0] == kept, (fraction, variant)
        np.testing.assert_array_equal(keep.reshape(-1), [u >= threshold for u in bits])
        np.testing.assert_array_equal(y, np.where(keep == 1, x * np.float32(1 / (1 - p)), 0))


def check_c_dropout_ties(ffi, lib, rng):
    """mlpf_sdropout keeps an element whose bits equal the threshold (u_i >= t) in each of the
    four words of a Philox block and past the first 64 elements (the AVX-512 loop's
    iteration), and drops it at t = u_i + 1; the mask and output of every element against
    philox_ref, with the stream words built here from the documented layout."""
    rows, cols = 2, 41                                   # 82 elements: 2 AVX-512 iterations
    seed, step, layer = 2 ** 32 + 77, 2 ** 32 + 3, 6
    words = [seed & WORD, seed >> 32, layer, step & WORD, step >> 32]
    bits = [philox_ref((i // 4, layer, step & WORD, step >> 32), (seed & WORD, seed >> 32))[i % 4]
            for i in range(rows * cols)]
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    previous = lib.mlpf_get_num_threads()
    try:
        lib.mlpf_set_num_threads(1)
        for i in (0, 1, 2, 3, 70):
            for threshold in (bits[i], bits[i] + 1):
                out, keep = np.full_like(x, np.nan), np.full(x.shape, 7, np.uint8)
                status = lib.mlpf_sdropout(
                    ffi.cast("float *", x.ctypes.data), ffi.cast("float *", out.ctypes.data),
                    ffi.cast("uint8_t *", keep.ctypes.data), rows, cols, threshold, *words, 2.0)
                assert status == 0
                want = np.array([u >= threshold for u in bits], np.uint8).reshape(x.shape)
                assert keep.reshape(-1)[i] == (threshold == bits[i]), (i, threshold)
                assert np.array_equal(keep, want), (i, threshold)
                assert np.array_equal(out, np.where(want == 1, 2 * x, 0)), (i, threshold)
    finally:
        lib.mlpf_set_num_threads(previous)


def test_c_dropout_keeps_an_element_whose_bits_equal_the_threshold(rng):
    """The compiled step's masks (the portable build's loop: test_cgemm.py)."""
    from mlpfast.kernels._c_library import c_available, c_library
    if not c_available():
        pytest.skip("the C library is not built")
    check_c_dropout_ties(c_library().ffi, c_library().lib, rng)

"""im2col/col2im against plain loops, several strides and paddings."""
import numpy as np
import pytest

from tinyitop.im2col import col2im, im2col, output_size


def loop_im2col(x, kh, kw, stride, padding):
    n, c, h, w = x.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    cols = np.zeros((c * kh * kw, n * oh * ow), dtype=x.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = xp_[b, :, i * stride:i * stride + kh, j * stride:j * stride + kw]  # (C, KH, KW)
                cols[:, (b * oh + i) * ow + j] = patch.reshape(-1)
    return cols


CASES = [(3, 3, 1, 0), (3, 3, 1, 1), (3, 3, 2, 1), (1, 1, 1, 1), (2, 2, 2, 0), (3, 2, 2, 2), (5, 5, 3, 2)]


@pytest.mark.parametrize("kh,kw,stride,padding", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_matches_loops(host_rng, kh, kw, stride, padding, dtype):
    x = host_rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    cols = im2col(x, kh, kw, stride, padding)
    assert cols.dtype == dtype                    # no silent float32 -> float64
    np.testing.assert_array_equal(cols, loop_im2col(x, kh, kw, stride, padding))


@pytest.mark.parametrize("kh,kw,stride,padding", CASES)
def test_col2im_is_the_adjoint(host_rng, kh, kw, stride, padding):
    """<im2col(x), c> == <x, col2im(c)> for random x, c: col2im sums overlaps exactly."""
    x = host_rng.standard_normal((2, 3, 7, 6))
    cols = host_rng.standard_normal(im2col(x, kh, kw, stride, padding).shape)
    lhs = np.sum(im2col(x, kh, kw, stride, padding) * cols)
    rhs = np.sum(x * col2im(cols, x.shape, kh, kw, stride, padding))
    assert np.isclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("kh,kw,stride,padding", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_col2im_gathers_give_the_slice_loops_bits(host_rng, monkeypatch, kh, kw, stride, padding, dtype):
    """The CPU aside for narrow images (gathers) adds the same values in the same order as the
    slice loop: equal bit for bit, negative zeros and all."""
    import tinyitop.im2col as module
    x_shape = (3, 4, 7, 6)
    dcols = host_rng.standard_normal(im2col(np.zeros(x_shape), kh, kw, stride, padding).shape).astype(dtype)
    dcols[:, ::7] = -0.0                                   # some contributions are negative zeros
    monkeypatch.setattr(module, "GATHER_MAX_WIDTH", 0)     # every width by the slice loop
    by_slices = col2im(dcols, x_shape, kh, kw, stride, padding)
    monkeypatch.setattr(module, "GATHER_MAX_WIDTH", 10 ** 6)   # every width by gathers
    by_gathers = col2im(dcols, x_shape, kh, kw, stride, padding)
    assert by_gathers.dtype == dtype and by_gathers.shape == x_shape
    assert by_gathers.tobytes() == np.ascontiguousarray(by_slices).tobytes()


# ---- The CuPy kernels' bodies (tinyitop/fused.py), checked without a GPU --------------------------
# Compiled by the host C compiler inside the loop an ElementwiseKernel runs (tests/cuda_on_cpu.py),
# the im2col/col2im bodies must give exactly what the NumPy slice loops give (same additions in the
# same order).
@pytest.mark.parametrize("kh,kw,stride,padding", CASES)
def test_cuda_bodies_of_im2col_and_col2im_equal_the_slice_loops(host_rng, tmp_path, kh, kw, stride, padding):
    from cuda_on_cpu import compile_body
    im2col_body, col2im_body = compile_body("im2col", tmp_path), compile_body("col2im", tmp_path)
    n, c, h, w = 2, 3, 7, 6
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x = host_rng.standard_normal((n, c, h, w))
    cols = np.empty((c * kh * kw, n * oh * ow))
    im2col_body(x.transpose(1, 0, 2, 3), n, h, w, kh, kw, oh, ow, stride, padding, cols)   # x as (C, N, H, W)
    np.testing.assert_array_equal(cols, im2col(x, kh, kw, stride, padding))
    dcols = host_rng.standard_normal(cols.shape)                                           # a random upstream
    dx = np.empty((c, n, h, w))
    col2im_body(dcols, n, h, w, kh, kw, oh, ow, stride, padding, dx)
    np.testing.assert_array_equal(dx.transpose(1, 0, 2, 3), col2im(dcols, x.shape, kh, kw, stride, padding))

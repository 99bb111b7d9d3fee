"""im2col / col2im: turn a convolution into one matrix product (Chellapilla et al. 2006).

Layout is NCHW. The columns are stored *feature-major*: one row per (channel, ky, kx) and one
column per output pixel, (C*KH*KW, N*OH*OW), so that a weight matrix (O, C*KH*KW), dense or
CSR, multiplies them directly with no transpose (PERF-NOTES: CSR times a feature-major operand).
"""
from tinyitop import backend as B


def output_size(size, kernel, stride, padding):
    """Spatial output size of a convolution/pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kernel_h, kernel_w, stride=1, padding=0):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW), same dtype as x."""
    xp = B.xp
    n, c, h, w = x.shape
    out_h = output_size(h, kernel_h, stride, padding)
    out_w = output_size(w, kernel_w, stride, padding)
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # (N, C, H+2p, W+2p)
    cols = xp.empty((c, kernel_h, kernel_w, n, out_h, out_w), dtype=x.dtype)
    # One strided slice per kernel offset: KH*KW copies, each of the whole batch.
    for ky in range(kernel_h):
        y_end = ky + stride * out_h
        for kx in range(kernel_w):
            x_end = kx + stride * out_w
            patch = x[:, :, ky:y_end:stride, kx:x_end:stride]       # (N, C, OH, OW)
            cols[:, ky, kx] = patch.transpose(1, 0, 2, 3)            # (C, N, OH, OW)
    return cols.reshape(c * kernel_h * kernel_w, n * out_h * out_w)  # (C*KH*KW, N*OH*OW)


def col2im(cols, x_shape, kernel_h, kernel_w, stride=1, padding=0):
    """Adjoint of im2col: cols (C*KH*KW, N*OH*OW) -> (N, C, H, W), overlapping patches summed."""
    xp = B.xp
    n, c, h, w = x_shape
    out_h = output_size(h, kernel_h, stride, padding)
    out_w = output_size(w, kernel_w, stride, padding)
    cols = cols.reshape(c, kernel_h, kernel_w, n, out_h, out_w)
    padded = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for ky in range(kernel_h):
        y_end = ky + stride * out_h
        for kx in range(kernel_w):
            x_end = kx + stride * out_w
            padded[:, :, ky:y_end:stride, kx:x_end:stride] += cols[:, ky, kx].transpose(1, 0, 2, 3)  # (N, C, OH, OW)
    if padding:
        return padded[:, :, padding:padding + h, padding:padding + w]  # (N, C, H, W)
    return padded

"""im2col / col2im: turn a convolution into one matrix product (Chellapilla et al. 2006).

Layout is NCHW. The columns are stored *feature-major*: one row per (channel, ky, kx) and one
column per output pixel, (C*KH*KW, N*OH*OW), so that a weight matrix (O, C*KH*KW), dense or
CSR, multiplies them directly with no transpose (docs/SPEED.md: why feature-major).
"""
import math

from tinyitop import backend as B
from tinyitop import fused, threads


def output_size(size, kernel, stride, padding):
    """Spatial output size of a convolution/pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kernel_h, kernel_w, stride=1, padding=0, out=None):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW), same dtype as x; written into `out` if it is an
    array of that size and dtype (a conv's buffer from its last step: fresh, the columns of a narrow
    VGG's first convs cost ~7 ms of page faults per 75 MB here, docs/SPEED.md).

    The input is copied once into a zero-padded channel-major (C, N, H+2p, W+2p) buffer; each of
    the KH*KW kernel offsets is then a plain strided slice of it, in the layout of the columns.
    When x is itself a channel-major buffer seen as NCHW (what Conv2d, BatchNorm and ReLU pass
    along), the first copy reads it contiguously. (Slicing NCHW directly would make every one of
    those copies a transpose too: slower, docs/SPEED.md.) Channels are independent: on a CPU, blocks
    of them run on separate threads (threads.py).
    """
    xp = B.xp
    n, c, h, w = x.shape
    out_h = output_size(h, kernel_h, stride, padding)
    out_w = output_size(w, kernel_w, stride, padding)
    if not fused.gpu():
        channel_major = x.transpose(1, 0, 2, 3)                                             # (C, N, H, W)
        shape = (c, kernel_h, kernel_w, n, out_h, out_w)
        reuse = out is not None and out.size == math.prod(shape) and out.dtype == x.dtype
        cols = out.reshape(shape) if reuse else xp.empty(shape, dtype=x.dtype)

        def block(ch):                               # channels ch only (threads.over_channels)
            pad = (padding, padding)
            padded = xp.pad(channel_major[ch], ((0, 0), (0, 0), pad, pad))                  # (c, N, H+2p, W+2p)
            for ky in range(kernel_h):
                y_end = ky + stride * out_h
                for kx in range(kernel_w):
                    x_end = kx + stride * out_w
                    cols[ch, ky, kx] = padded[:, :, ky:y_end:stride, kx:x_end:stride]      # (c, N, OH, OW)
        threads.over_channels(block, c, cols.nbytes)
        return cols.reshape(c * kernel_h * kernel_w, n * out_h * out_w)  # (C*KH*KW, N*OH*OW)
    return fused.im2col(x, kernel_h, kernel_w, stride, padding, out_h, out_w)   # GPU aside: the above, one kernel


def col2im(cols, x_shape, kernel_h, kernel_w, stride=1, padding=0):
    """Adjoint of im2col: cols (C*KH*KW, N*OH*OW) -> (N, C, H, W), overlapping patches summed.

    Summed in a channel-major (C, N, H+2p, W+2p) buffer, the layout of the columns; the result is
    that buffer seen as NCHW (a view, no copy).
    """
    xp = B.xp
    n, c, h, w = x_shape
    out_h = output_size(h, kernel_h, stride, padding)
    out_w = output_size(w, kernel_w, stride, padding)
    if not fused.gpu():
        cols = cols.reshape(c, kernel_h, kernel_w, n, out_h, out_w)
        padded = xp.empty((c, n, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)    # (C, N, H+2p, W+2p)

        def block(ch):                               # channels ch only (threads.over_channels)
            padded[ch] = 0
            for ky in range(kernel_h):
                y_end = ky + stride * out_h
                for kx in range(kernel_w):
                    x_end = kx + stride * out_w
                    padded[ch, :, ky:y_end:stride, kx:x_end:stride] += cols[ch, ky, kx]    # (c, N, OH, OW)
        threads.over_channels(block, c, cols.nbytes)
        return padded[:, :, padding:padding + h, padding:padding + w].transpose(1, 0, 2, 3)  # (N, C, H, W) view
    return fused.col2im(cols, x_shape, kernel_h, kernel_w, stride, padding, out_h, out_w)   # GPU aside: one kernel

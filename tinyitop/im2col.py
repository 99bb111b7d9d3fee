"""im2col / col2im: turn a convolution into one matrix product (Chellapilla et al. 2006).

Layout is NCHW. The columns are stored *feature-major*: one row per (channel, ky, kx) and one
column per output pixel, (C*KH*KW, N*OH*OW), so that a weight matrix (O, C*KH*KW), dense or
CSR, multiplies them directly with no transpose (docs/SPEED.md: why feature-major).
"""
import functools
import math

from tinyitop import backend as B
from tinyitop import fused, threads

# col2im's CPU aside for narrow images (`_col2im_by_gathers`): at this input width and below, rows of
# <= 4 values make each strided `+=` of the slice loop mostly per-row overhead. The gathers visit every
# input pixel once per kernel offset, so they win on small images only; the break-even is measured by
# benchmarks/bench_col2im.py (figures in docs/SPEED.md).
GATHER_MAX_WIDTH = 4


def output_size(size, kernel, stride, padding):
    """Spatial output size of a convolution/pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kernel_h, kernel_w, stride=1, padding=0, out=None):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW), same dtype as x; written into `out` if it is an
    array of that size and dtype (a conv's buffer from its last step: a fresh array that size costs
    page faults before its first byte is written, docs/SPEED.md).

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
    if B.name == "numpy" and w <= GATHER_MAX_WIDTH:
        return _col2im_by_gathers(cols, x_shape, kernel_h, kernel_w, stride, padding)   # CPU aside, same sums
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


def _col2im_by_gathers(cols, x_shape, kernel_h, kernel_w, stride, padding):
    """CPU aside: col2im for narrow images, with long loops. For each kernel offset in the same
    order as above, one `take` gathers the value that offset adds to every input pixel (an appended
    zero where it adds none), and one contiguous `+=` adds it. The same additions in the same order,
    so the same bits: x + 0 == x, and the running sum, starting at +0, is never -0."""
    xp = B.xp
    n, c, h, w = x_shape
    offsets = kernel_h * kernel_w
    source = _gather_plan(n, h, w, kernel_h, kernel_w, stride, padding)       # (KH*KW, N*H*W)
    cols = cols.reshape(c, -1)                                                 # (C, KH*KW*N*OH*OW)
    dx = xp.empty((c, n * h * w), dtype=cols.dtype)                            # (C, N*H*W)

    def block(ch):                               # channels ch only (threads.over_channels)
        extended = xp.empty((ch.stop - ch.start, cols.shape[1] + 1), dtype=cols.dtype)
        extended[:, :-1], extended[:, -1] = cols[ch], 0                        # + one zero at the end
        gathered = xp.empty((ch.stop - ch.start, n * h * w), dtype=cols.dtype)
        dx[ch] = 0
        for k in range(offsets):
            xp.take(extended, source[k], axis=1, out=gathered)
            dx[ch] += gathered
    threads.over_channels(block, c, cols.nbytes)
    return dx.reshape(c, n, h, w).transpose(1, 0, 2, 3)                      # (N, C, H, W) view


@functools.lru_cache(maxsize=32)
def _gather_plan(n, h, w, kernel_h, kernel_w, stride, padding):
    """(KH*KW, N*H*W) indices: for kernel offset k and input pixel (b, y, x), its column in one
    channel's columns (KH*KW*N*OH*OW of them), or that count (the appended zero) if k adds nothing
    there. Made once per geometry (cached); nobody writes to it."""
    xp = B.xp
    out_h, out_w = output_size(h, kernel_h, stride, padding), output_size(w, kernel_w, stride, padding)
    per_offset = n * out_h * out_w
    b, y, x = xp.ix_(xp.arange(n), xp.arange(h), xp.arange(w))
    plan = xp.empty((kernel_h, kernel_w, n, h, w), dtype=xp.int64)
    zero = kernel_h * kernel_w * per_offset                                    # the appended zero
    for ky in range(kernel_h):
        for kx in range(kernel_w):
            ty, tx = y + padding - ky, x + padding - kx                        # output pixel * stride
            oy, ox = ty // stride, tx // stride
            hits = (ty % stride == 0) & (tx % stride == 0) & (ty >= 0) & (oy < out_h) & (tx >= 0) & (ox < out_w)
            column = (ky * kernel_w + kx) * per_offset + (b * out_h + oy) * out_w + ox
            plan[ky, kx] = xp.where(hits, column, zero)
    return plan.reshape(kernel_h * kernel_w, -1)

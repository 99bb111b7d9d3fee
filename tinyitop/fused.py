"""Fused elementwise steps: one GPU kernel where plain array code launches many.

On a GPU each small array operation costs ~12.5 us of launch overhead from Python (GPU-NOTES):
the SGD update of the paper MLP was ~55 of them (0.68 ms; one fused kernel per parameter 0.19 ms),
and BatchNorm, ReLU and the residual add are chains of the same kind. Each function below is the
plain NumPy expression (what to read: the math) and, on CuPy, one `cupy.ElementwiseKernel` doing
the same per element in one launch. im2col/col2im and the softmax cross-entropy have their kernels
here too, called from im2col.py and losses.py beside the expressions they replace. Kernels and
expressions are tested against each other on a real GPU (tests/test_gpu.py) and, for the kernel
bodies of im2col, col2im and the loss, on the CPU by the host C compiler (tests/cuda_on_cpu.py);
on a CPU, and on the CPU stand-in for CuPy, the NumPy expression runs.
"""
from tinyitop import backend as B

_kernels = {}


def kernel(name):
    """The compiled CuPy kernel `name` (built once), or None where the plain expression runs.

    The stand-in for CuPy (tests/fake_cupy.py) has CuPy's names but cannot compile CUDA: it takes
    the plain path, like NumPy.
    """
    if B.name != "cupy" or not hasattr(B.xp, "ElementwiseKernel") or not hasattr(B.xp, "cuda"):
        return None
    if name not in _kernels:
        inputs, outputs, body = _CUDA[name]
        _kernels[name] = B.xp.ElementwiseKernel(inputs, outputs, body, f"tinyitop_{name}")
    return _kernels[name]


# CUDA bodies: (input params, output params, per-element code). Outputs may also be read (in place).
_CUDA = {
    "sgd": ("T grad, T lr, T momentum, T weight_decay, bool nesterov", "T param, T velocity",
            "T g = grad + weight_decay * param;"
            "velocity = momentum * velocity + g;"
            "param -= lr * (nesterov ? g + momentum * velocity : velocity);"),
    "bn_forward": ("T x, T mean, T inv_std, T gamma, T beta", "T x_hat, T y",
                   "x_hat = (x - mean) * inv_std; y = gamma * x_hat + beta;"),
    "bn_backward": ("T dout, T x_hat, T gamma, T inv_std, T dbeta_sum, T dgamma_sum, T count", "T dx",
                    "dx = gamma * inv_std * (dout - dbeta_sum / count - x_hat * (dgamma_sum / count));"),
    "running_update": ("T value, T momentum, T factor", "T running",
                       "running = ((T)1 - momentum) * running + momentum * value * factor;"),
    "inv_std": ("T var, T eps", "T inv_std", "inv_std = (T)1 / sqrt(var + eps);"),
    "normalise": ("U image, T mean, T std", "T out", "out = ((T)image / (T)255 - mean) / std;"),
    "relu_backward": ("T dout, T y", "T dx", "dx = y > 0 ? dout : (T)0;"),
    "add_relu": ("T a, T b", "T y", "T s = a + b; y = s > 0 ? s : (T)0;"),
    # im2col / col2im (tinyitop/im2col.py, which calls them beside the slice loops they replace): one
    # kernel each instead of 1 + KH*KW strided copies. i runs over the output; x is (C, N, H, W)
    # contiguous, cols (C*KH*KW, N*OH*OW); a position in the zero padding reads as 0.
    "im2col": ("raw T x, int32 n, int32 h, int32 w, int32 kh, int32 kw, int32 oh, int32 ow, int32 stride, "
               "int32 pad", "T cols",
               "const ptrdiff_t m = (ptrdiff_t)n * oh * ow, row = i / m, col = i - row * m;"
               "const int kx = row % kw, ky = (row / kw) % kh, ox = col % ow, oy = (col / ow) % oh;"
               "const ptrdiff_t ch = row / ((ptrdiff_t)kh * kw), image = col / ((ptrdiff_t)oh * ow);"
               "const int y = oy * stride - pad + ky, xx = ox * stride - pad + kx;"
               "cols = (y >= 0 && y < h && xx >= 0 && xx < w) ? x[((ch * n + image) * h + y) * w + xx] : (T)0;"),
    # The adjoint, as a gather (no atomics): each input position sums the column entries it fed, in
    # the slice loop's order (ky, then kx), so the two paths add the same numbers in the same order.
    "col2im": ("raw T cols, int32 n, int32 h, int32 w, int32 kh, int32 kw, int32 oh, int32 ow, int32 stride, "
               "int32 pad", "T dx",
               "const int xx = i % w, y = (i / w) % h;"
               "const ptrdiff_t image = (i / ((ptrdiff_t)h * w)) % n, ch = i / ((ptrdiff_t)h * w * n);"
               "const ptrdiff_t m = (ptrdiff_t)n * oh * ow;"
               "T sum = 0;"
               "for (int ky = 0; ky < kh; ++ky) {"
               "  const int ty = y + pad - ky;"
               "  if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;"
               "  for (int kx = 0; kx < kw; ++kx) {"
               "    const int tx = xx + pad - kx;"
               "    if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;"
               "    sum += cols[((ch * kh + ky) * kw + kx) * m + (image * oh + ty / stride) * ow + tx / stride];"
               "  }"
               "}"
               "dx = sum;"),
    # Softmax cross-entropy (tinyitop/losses.py, which calls these beside the expressions they
    # replace): the forward is one thread per sample looping over its K logits (K is 10-100 here, so
    # this beats the ~10 launches of the plain expression), in the plain expression's steps; the
    # backward one thread per logit. logits and probs (N, K) C-contiguous, labels (N,).
    "softmax_xent": ("raw T logits, raw I labels, int32 k", "raw T probs, T loss",
                     "const ptrdiff_t row = (ptrdiff_t)i * k;"
                     "T top = logits[row];"
                     "for (int j = 1; j < k; ++j) top = logits[row + j] > top ? logits[row + j] : top;"
                     "T total = 0;"
                     "for (int j = 0; j < k; ++j) total += exp(logits[row + j] - top);"
                     "const T log_norm = log(total);"
                     "for (int j = 0; j < k; ++j) probs[row + j] = exp(logits[row + j] - top - log_norm);"
                     "loss = log_norm - (logits[row + labels[i]] - top);"),
    "softmax_xent_grad": ("T probs, raw I labels, int32 k, T n", "T dlogits",
                          "dlogits = (probs - (labels[i / k] == i % k ? (T)1 : (T)0)) / n;"),
}


def like(x):
    """An uninitialised array shaped and laid out in memory like x, for a kernel's output.

    CuPy's kernels and ufuncs return C-contiguous arrays (NumPy keeps the input's layout). A conv's
    output is channel-major memory (O, N, OH, OW) seen as (N, O, OH, OW), the layout the next conv's
    im2col reads and its weight gradient wants as (O, N*OH*OW); a linear layer's is (out, N) seen as
    (N, out). Writing BatchNorm, ReLU and the residual add into arrays laid out like their input
    keeps that layout along the network, so the next layer's transposes are views, not copies.
    """
    return B.xp.empty_like(x)


def sgd_step(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    """In place: v = m v + (g + wd p); p -= lr (g + wd p + m v) if Nesterov else lr v (PyTorch's SGD)."""
    compiled = kernel("sgd")
    if compiled is not None:
        compiled(grad, lr, momentum, weight_decay, bool(nesterov), param, velocity)
        return
    g = grad + weight_decay * param if weight_decay else grad
    velocity *= momentum
    velocity += g                                  # v = m v + g (no dampening)
    param -= lr * (g + momentum * velocity if nesterov else velocity)


def bn_normalise(x, mean, inv_std, gamma, beta):
    """x_hat = (x - mean) / std and y = gamma x_hat + beta, broadcasting per channel -> (x_hat, y)."""
    compiled = kernel("bn_forward")
    if compiled is not None:
        return compiled(x, mean, inv_std, gamma, beta, like(x), like(x))
    x_hat = (x - mean) * inv_std
    return x_hat, gamma * x_hat + beta


def running_update(running, value, momentum, factor=1.0):
    """In place: running = (1 - momentum) running + momentum value factor (BN's running statistics)."""
    compiled = kernel("running_update")
    if compiled is not None:
        compiled(value, momentum, factor, running)
        return
    running *= 1 - momentum
    running += momentum * value * factor


def inverse_std(var, eps):
    """1 / sqrt(var + eps)."""
    compiled = kernel("inv_std")
    if compiled is not None:
        return compiled(var, eps)
    return 1 / B.xp.sqrt(var + eps)


def bn_input_grad(dout, x_hat, gamma, inv_std, dbeta_sum, dgamma_sum, count):
    """dx = gamma/std (dout - mean(dout) - x_hat mean(dout x_hat)), from the per-channel sums of dout
    and dout x_hat over `count` values (one kernel for the scale, the two means and dx on a GPU)."""
    compiled = kernel("bn_backward")
    if compiled is not None:
        return compiled(dout, x_hat, gamma, inv_std, dbeta_sum, dgamma_sum, count, like(dout))
    return gamma * inv_std * (dout - dbeta_sum / count - x_hat * (dgamma_sum / count))


def normalise(images, mean, std):
    """uint8 images -> float32 (x / 255 - mean) / std, per channel (mean, std broadcast)."""
    compiled = kernel("normalise")
    if compiled is not None:
        return compiled(images, mean, std)
    return (images.astype(mean.dtype) / mean.dtype.type(255) - mean) / std


def relu(x):
    """max(x, 0): one kernel on both backends, laid out like x."""
    return B.xp.maximum(x, 0, out=like(x))


def relu_backward(dout, y):
    """dout where the ReLU's output y > 0, else 0."""
    compiled = kernel("relu_backward")
    if compiled is not None:
        return compiled(dout, y, like(dout))
    return dout * (y > 0)


def add_relu(a, b):
    """max(a + b, 0): the end of a residual block, one kernel on a GPU."""
    compiled = kernel("add_relu")
    if compiled is not None:
        return compiled(a, b, like(a))
    return B.xp.maximum(a + b, 0)

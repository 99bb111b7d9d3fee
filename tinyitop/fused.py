"""GPU asides: one CUDA kernel where the plain array expression would launch many.

On a GPU each small array operation costs ~12.5 us of launch overhead from Python (docs/SPEED.md),
so a chain of them (BatchNorm, the SGD update, im2col's KH*KW copies, the loss) costs more than its
arithmetic. Each function below launches one `cupy.ElementwiseKernel` whose CUDA body sits right
above it; the math it computes is written in plain NumPy in the method that calls it (layers.py,
optim.py, losses.py, im2col.py, data.py), which is what to read. The callers run the plain
expression wherever `gpu()` is False: on NumPy and on the CPU stand-in for CuPy, which cannot compile
CUDA. Kernels and expressions are compared on a real GPU (tests/test_gpu.py); the bodies of im2col,
col2im and the loss are also compiled by the host C compiler and checked on the CPU
(tests/cuda_on_cpu.py).
"""
from tinyitop import backend as B

_CUDA = {}          # name -> (input params, output params, per-element CUDA code); outputs may be read
_compiled = {}


def cuda(name, inputs, outputs, body):
    """Register the CUDA body of kernel `name` (compiled on first use)."""
    _CUDA[name] = (inputs, outputs, body)


def kernel(name):
    """The compiled CuPy kernel `name` (built once), or None where the plain expression runs."""
    if B.name != "cupy" or not hasattr(B.xp, "ElementwiseKernel") or not hasattr(B.xp, "cuda"):
        return None
    if name not in _compiled:
        inputs, outputs, body = _CUDA[name]
        _compiled[name] = B.xp.ElementwiseKernel(inputs, outputs, body, f"tinyitop_{name}")
    return _compiled[name]


def gpu():
    """Whether the kernels below run here (CuPy on a GPU); if not, callers use the plain expression."""
    return kernel("sgd") is not None


def like(x):
    """An uninitialised array shaped and laid out in memory like x, for a kernel's output.

    CuPy's kernels and ufuncs return C-contiguous arrays (NumPy keeps the input's layout). A conv's
    output is channel-major memory (O, N, OH, OW) seen as (N, O, OH, OW), the layout the next conv's
    im2col reads and its weight gradient wants as (O, N*OH*OW); a linear layer's is (out, N) seen as
    (N, out). Writing BatchNorm, ReLU and the residual add into arrays laid out like their input
    keeps that layout along the network, so the next layer's transposes are views, not copies.
    """
    return B.xp.empty_like(x)


# ---- optim.py: SGD ------------------------------------------------------------------------------
cuda("sgd", "T grad, T lr, T momentum, T weight_decay, bool nesterov", "T param, T velocity",
     "T g = grad + weight_decay * param;"
     "velocity = momentum * velocity + g;"
     "param -= lr * (nesterov ? g + momentum * velocity : velocity);")


def sgd_step(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    kernel("sgd")(grad, lr, momentum, weight_decay, bool(nesterov), param, velocity)


# ---- layers.py: BatchNorm ------------------------------------------------------------------------
cuda("running_update", "T value, T momentum, T factor", "T running",
     "running = ((T)1 - momentum) * running + momentum * value * factor;")


def running_update(running, value, momentum, factor=1.0):
    kernel("running_update")(value, momentum, factor, running)


cuda("inv_std", "T var, T eps", "T inv_std", "inv_std = (T)1 / sqrt(var + eps);")


def inverse_std(var, eps):
    return kernel("inv_std")(var, eps)


cuda("bn_forward", "T x, T mean, T inv_std, T gamma, T beta", "T x_hat, T y",
     "x_hat = (x - mean) * inv_std; y = gamma * x_hat + beta;")


def bn_normalise(x, mean, inv_std, gamma, beta):
    """-> (x_hat, y), laid out like x."""
    return kernel("bn_forward")(x, mean, inv_std, gamma, beta, like(x), like(x))


cuda("bn_backward", "T dout, T x_hat, T gamma, T inv_std, T dbeta_sum, T dgamma_sum, T count", "T dx",
     "dx = gamma * inv_std * (dout - dbeta_sum / count - x_hat * (dgamma_sum / count));")


def bn_input_grad(dout, x_hat, gamma, inv_std, dbeta_sum, dgamma_sum, count):
    return kernel("bn_backward")(dout, x_hat, gamma, inv_std, dbeta_sum, dgamma_sum, count, like(dout))


# ---- layers.py: ReLU, and the end of a residual block ----------------------------------------------
cuda("relu_backward", "T dout, T y", "T dx", "dx = y > 0 ? dout : (T)0;")


def relu_backward(dout, y):
    return kernel("relu_backward")(dout, y, like(dout))


cuda("add_relu", "T a, T b", "T y", "T s = a + b; y = s > 0 ? s : (T)0;")


def add_relu(a, b):
    return kernel("add_relu")(a, b, like(a))


# ---- data.py: uint8 images -> normalised float32 -------------------------------------------------
cuda("normalise", "U image, T mean, T std", "T out", "out = ((T)image / (T)255 - mean) / std;")


def normalise(images, mean, std):
    return kernel("normalise")(images, mean, std)


# ---- im2col.py: one kernel each instead of 1 + KH*KW strided copies -------------------------------
# i runs over the output; x is (C, N, H, W) contiguous, cols (C*KH*KW, N*OH*OW); a position in the
# zero padding reads as 0.
cuda("im2col", "raw T x, int32 n, int32 h, int32 w, int32 kh, int32 kw, int32 oh, int32 ow, int32 stride, "
     "int32 pad", "T cols",
     "const ptrdiff_t m = (ptrdiff_t)n * oh * ow, row = i / m, col = i - row * m;"
     "const int kx = row % kw, ky = (row / kw) % kh, ox = col % ow, oy = (col / ow) % oh;"
     "const ptrdiff_t ch = row / ((ptrdiff_t)kh * kw), image = col / ((ptrdiff_t)oh * ow);"
     "const int y = oy * stride - pad + ky, xx = ox * stride - pad + kx;"
     "cols = (y >= 0 && y < h && xx >= 0 && xx < w) ? x[((ch * n + image) * h + y) * w + xx] : (T)0;")


def im2col(x, kernel_h, kernel_w, stride, padding, out_h, out_w):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW)."""
    xp = B.xp
    n, c, h, w = x.shape
    source = xp.ascontiguousarray(x.transpose(1, 0, 2, 3))                 # (C, N, H, W), free if x is
    cols = xp.empty((c * kernel_h * kernel_w, n * out_h * out_w), dtype=x.dtype)   # channel-major already
    kernel("im2col")(source, n, h, w, kernel_h, kernel_w, out_h, out_w, stride, padding, cols)
    return cols


# The adjoint, as a gather (no atomics): each input position sums the column entries it fed, in
# the slice loop's order (ky, then kx), so the two paths add the same numbers in the same order.
cuda("col2im", "raw T cols, int32 n, int32 h, int32 w, int32 kh, int32 kw, int32 oh, int32 ow, int32 stride, "
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
     "dx = sum;")


def col2im(cols, x_shape, kernel_h, kernel_w, stride, padding, out_h, out_w):
    """cols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), a view of channel-major memory."""
    xp = B.xp
    n, c, h, w = x_shape
    dx = xp.empty((c, n, h, w), dtype=cols.dtype)                                  # (C, N, H, W)
    kernel("col2im")(xp.ascontiguousarray(cols), n, h, w, kernel_h, kernel_w, out_h, out_w, stride, padding, dx)
    return dx.transpose(1, 0, 2, 3)


# ---- losses.py: softmax cross-entropy --------------------------------------------------------------
# Forward: one thread per sample looping over its K logits (K is 10-100 here, so this beats the ~10
# launches of the plain expression), in the plain expression's steps. logits and probs (N, K)
# C-contiguous, labels (N,).
cuda("softmax_xent", "raw T logits, raw I labels, int32 k", "raw T probs, T loss",
     "const ptrdiff_t row = (ptrdiff_t)i * k;"
     "T top = logits[row];"
     "for (int j = 1; j < k; ++j) top = logits[row + j] > top ? logits[row + j] : top;"
     "T total = 0;"
     "for (int j = 0; j < k; ++j) total += exp(logits[row + j] - top);"
     "const T log_norm = log(total);"
     "for (int j = 0; j < k; ++j) probs[row + j] = exp(logits[row + j] - top - log_norm);"
     "loss = log_norm - (logits[row + labels[i]] - top);")


def softmax_xent(logits, labels):
    """-> (probs (N, K), per-sample losses (N,))."""
    xp = B.xp
    n, k = logits.shape
    probs, losses = xp.empty((n, k), dtype=logits.dtype), xp.empty(n, dtype=logits.dtype)
    kernel("softmax_xent")(xp.ascontiguousarray(logits), labels, k, probs, losses)
    return probs, losses


# Backward: one thread per logit.
cuda("softmax_xent_grad", "T probs, raw I labels, int32 k, T n", "T dlogits",
     "dlogits = (probs - (labels[i / k] == i % k ? (T)1 : (T)0)) / n;")


def softmax_xent_grad(probs, labels):
    n, k = probs.shape
    return kernel("softmax_xent_grad")(probs, labels, k, n)

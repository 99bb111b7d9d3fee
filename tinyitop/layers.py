"""Layers with explicit backprop: Linear, Conv2d (im2col), BatchNorm1d/2d, ReLU, pooling, Flatten.

Each layer is a small class (the style of "Deep Learning from Scratch", Saito 2016): `forward(x)`
keeps what backward needs under plain names; `backward(dout)` returns dx and stores each
parameter's gradient in `param.grad`, next to `param.data`. Images are NCHW. Weight init and
argument names follow PyTorch's defaults, so parameter counts and results are comparable.
"""
import math

import numpy as np

from tinyitop import backend as B
from tinyitop import fused, threads
from tinyitop.im2col import col2im, im2col, output_size

DEFAULT_DTYPE = "float32"


class Parameter:
    """A dense trainable array `data` and its gradient `grad` (same shape and dtype)."""

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def numel(self):
        return int(self.data.size)

    def astype(self, dtype):
        self.data = self.data.astype(dtype)
        self.grad = None


class Module:
    """Base class: walks sub-modules (attributes, in definition order) to find parameters by name."""

    param_names = ()    # attributes holding Parameters, e.g. ("weight", "bias")
    buffer_names = ()   # attributes holding non-trained state, e.g. BN running statistics
    training = True
    # False on a network's first layer (models.skip_input_gradient): the gradient with respect to
    # the input images is never used, so backward skips its product (and col2im) and returns None.
    input_grad = True

    def __call__(self, x):
        return self.forward(x)

    def children(self):
        return [(key, value) for key, value in vars(self).items() if isinstance(value, Module)]

    def own_parameters(self):
        return [(key, getattr(self, key)) for key in self.param_names if getattr(self, key) is not None]

    def named_modules(self, prefix=""):
        yield prefix, self
        for key, child in self.children():
            yield from child.named_modules(f"{prefix}.{key}" if prefix else key)

    def named_parameters(self):
        """[(full name, Parameter)], e.g. ("fc1.weight", ...), in a fixed order."""
        out = []
        for module_name, module in self.named_modules():
            for key, param in module.own_parameters():
                out.append((f"{module_name}.{key}" if module_name else key, param))
        return out

    def named_buffers(self):
        out = []
        for module_name, module in self.named_modules():
            for key in module.buffer_names:
                out.append((f"{module_name}.{key}" if module_name else key, module, key))
        return out

    def parameter(self, full_name):
        return dict(self.named_parameters())[full_name]

    def num_parameters(self):
        return sum(p.numel for _, p in self.named_parameters())

    def train(self, mode=True):
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Cast every parameter and buffer, e.g. to float64 for gradient checks."""
        for _, param in self.named_parameters():
            param.astype(dtype)
        for _, module, key in self.named_buffers():
            setattr(module, key, getattr(module, key).astype(dtype))
        return self

    def dtype(self):
        return self.named_parameters()[0][1].dtype


def check_input(layer, x, ndim, features=None, axis=1):
    """Raise a clear error for a wrong rank, feature size or dtype before any math happens."""
    kind = type(layer).__name__
    if x.ndim != ndim:
        raise ValueError(f"{kind} expects a {ndim}-D input, got shape {tuple(x.shape)}")
    if features is not None and x.shape[axis] != features:
        raise ValueError(f"{kind} expects {features} features on axis {axis}, got shape {tuple(x.shape)}")
    params = layer.own_parameters()
    if params and x.dtype != params[0][1].dtype:
        raise TypeError(f"{kind} has {params[0][1].dtype} parameters but got a {x.dtype} input; "
                        "cast the input or call model.astype(dtype)")


def uniform(shape, bound, dtype=DEFAULT_DTYPE):
    """U(-bound, bound) (PyTorch's default init family), drawn on the host generator, then moved."""
    dtype = np.dtype(dtype)
    values = B.rng().random(shape, dtype=dtype) * (2 * bound) - bound
    return B.to_device(values.astype(dtype))


class Linear(Module):
    """y = x W^T + b; W (out_features, in_features). x (N, in) -> y (N, out)."""

    param_names = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True):
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) reduces to 1/sqrt(fan_in)
        self.weight = Parameter(uniform((out_features, in_features), bound))
        self.bias = Parameter(uniform((out_features,), bound)) if bias else None
        self.x = None

    def forward(self, x):
        check_input(self, x, 2, self.in_features)
        self.x = x
        y = x @ self.weight.data.T            # (N, in) @ (in, out) -> (N, out)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dout):
        self.weight.grad = dout.T @ self.x    # (out, N) @ (N, in) -> (out, in)
        if self.bias is not None:
            self.bias.grad = dout.sum(axis=0)  # (out,)
        if not self.input_grad:
            return None
        return dout @ self.weight.data        # (N, out) @ (out, in) -> (N, in)


def weight_gradient(dout_t, inputs_t):
    """dL/dW = dout_t @ inputs_t.T: (out, M) @ (M, in) -> (out, in), a sum over the M columns (the
    batch, or batch x output pixels for a conv).

    Aside: when in > out it is computed turned, (inputs_t @ dout_t.T).T: the same sums in the same
    order (the same bits), but OpenBLAS runs a product faster with the longer side as its rows
    (benchmarks/bench_weight_gradient.py; figures in docs/SPEED.md). Either way (out, in), maybe a view.
    """
    if inputs_t.shape[0] <= dout_t.shape[0]:
        return dout_t @ inputs_t.T                                       # (out, M) @ (M, in)
    return (inputs_t @ dout_t.T).T                                       # aside: ((in, M) @ (M, out)).T


class Conv2d(Module):
    """2-D convolution as one product: W (O, C*KH*KW) @ im2col(x) (C*KH*KW, N*OH*OW)."""

    param_names = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        fan_in = self._set_geometry(in_channels, out_channels, kernel_size, stride, padding)
        kh, kw = self.kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(uniform((out_channels, in_channels, kh, kw), bound))
        self.bias = Parameter(uniform((out_channels,), bound)) if bias else None

    def _set_geometry(self, in_channels, out_channels, kernel_size, stride, padding):
        """Channels, kernel, stride, padding and empty caches; returns the fan-in C*KH*KW."""
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride, self.padding = stride, padding
        self.x_shape = self.cols = self.spare = None
        return in_channels * self.kernel_size[0] * self.kernel_size[1]

    def output_shape(self, x_shape):
        n, _, h, w = x_shape
        kh, kw = self.kernel_size
        return (n, self.out_channels, output_size(h, kh, self.stride, self.padding),
                output_size(w, kw, self.stride, self.padding))

    def _check(self, x):
        check_input(self, x, 4, self.in_channels)
        _, _, out_h, out_w = self.output_shape(x.shape)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{type(self).__name__}: input {tuple(x.shape)} is smaller than the kernel")
        return out_h, out_w

    def forward(self, x):
        out_h, out_w = self._check(x)
        kh, kw = self.kernel_size
        self.x_shape = x.shape
        self.cols = im2col(x, kh, kw, self.stride, self.padding, out=self.spare)  # (C*KH*KW, N*OH*OW)
        out = self._matmul(self.cols)                                      # (O, N*OH*OW)
        if self.bias is not None:
            out += self.bias.data[:, None]
        n = x.shape[0]
        return out.reshape(self.out_channels, n, out_h, out_w).transpose(1, 0, 2, 3)  # (N, O, OH, OW)

    def _matmul(self, cols):
        return self.weight.data.reshape(self.out_channels, -1) @ cols      # (O, CKK) @ (CKK, M)

    def backward(self, dout):
        dout2 = dout.transpose(1, 0, 2, 3).reshape(self.out_channels, -1)  # (N, O, OH, OW) -> (O, N*OH*OW)
        if self.bias is not None:
            self.bias.grad = dout2.sum(axis=1)                              # (O,)
        dcols = self._backward_matmul(dout2)                                # (C*KH*KW, N*OH*OW)
        # The columns are spent: their memory is the next forward's (im2col's `out`), or dcols already.
        self.spare, self.cols = self.cols, None
        if dcols is None:                                                   # first layer: no dx
            return None
        kh, kw = self.kernel_size
        return col2im(dcols, self.x_shape, kh, kw, self.stride, self.padding)

    def _backward_matmul(self, dout2):
        w2 = self.weight.data.reshape(self.out_channels, -1)                # (O, CKK)
        self.weight.grad = weight_gradient(dout2, self.cols).reshape(self.weight.shape)  # (O, M) @ (M, CKK)
        if not self.input_grad:
            return None
        return B.xp.matmul(w2.T, dout2, out=self._spent_columns())          # (CKK, O) @ (O, M)

    def _spent_columns(self):
        """After the weight gradient the columns are spent: on a CPU dcols is written over them, as a
        fresh array of that size costs page faults (docs/SPEED.md); a GPU's memory pool is cheap."""
        return self.cols if B.name == "numpy" else None


class _BatchNorm(Module):
    """Batch normalisation (Ioffe & Szegedy 2015) over `axes`; one gamma/beta per channel."""

    param_names = ("weight", "bias")
    buffer_names = ("running_mean", "running_var")
    axes = None
    ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        xp = B.xp
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(xp.ones(num_features, dtype=DEFAULT_DTYPE))    # gamma
        self.bias = Parameter(xp.zeros(num_features, dtype=DEFAULT_DTYPE))     # beta
        self.running_mean = xp.zeros(num_features, dtype=DEFAULT_DTYPE)
        self.running_var = xp.ones(num_features, dtype=DEFAULT_DTYPE)
        self.x_hat = self.inv_std = None

    def _shape(self, vector):
        """(C,) -> broadcastable against the input: (1, C) or (1, C, 1, 1)."""
        return vector.reshape((1, -1) + (1,) * (self.ndim - 2))

    def _stat(self, x):
        """An empty per-channel statistic, (1, C) or (1, C, 1, 1)."""
        return self._shape(B.xp.empty(self.num_features, dtype=x.dtype))

    def forward(self, x):
        """y = gamma (x - mean) / sqrt(var + eps) + beta per channel, with the batch's mean and (biased)
        variance in training, the running ones in evaluation; x_hat and 1/std kept for backward."""
        self._check(x)
        xp, axes, eps, training = B.xp, self.axes, self.eps, self.training

        def normalise(x, mean, var, gamma, beta, x_hat, inv_std, y):        # channels c of each
            if training:                                                    # else: the running mean and var
                xp.mean(x, axis=axes, keepdims=True, out=mean)              # (1, c, 1, 1) for images
            xp.subtract(x, mean, out=x_hat)                                 # centred, scaled in place below
            if training:
                xp.mean(x_hat * x_hat, axis=axes, keepdims=True, out=var)   # biased, used to normalise
            xp.divide(1, xp.sqrt(var + eps), out=inv_std)
            x_hat *= inv_std                                                # (x - mean) / std
            xp.multiply(gamma, x_hat, out=y)
            y += beta                                                       # gamma x_hat + beta
        if fused.gpu():
            return self._forward_gpu(x)                     # GPU aside: the same in three kernels (fused.py)
        mean, var = self._statistics(x)
        self.x_hat, self.inv_std, y = fused.like(x), self._stat(x), fused.like(x)   # laid out like x
        threads.per_channel(normalise, x, mean, var, self._shape(self.weight.data), self._shape(self.bias.data),
                            self.x_hat, self.inv_std, y, touched=2 * x.nbytes)       # CPU aside: channels on 2 cores
        if training:
            self._update_running(mean.reshape(-1), var.reshape(-1), x.size // self.num_features)
        return y

    def _check(self, x):
        check_input(self, x, self.ndim, self.num_features)
        if self.training and x.size // self.num_features < 2:
            raise ValueError(f"{type(self).__name__} in train mode needs more than one value per channel")

    def _statistics(self, x):
        """(mean, var) shaped (1, C[, 1, 1]): empty ones for the batch's in training, else the running ones."""
        if self.training:
            return self._stat(x), self._stat(x)
        return self._shape(self.running_mean), self._shape(self.running_var)

    def _forward_gpu(self, x):
        """GPU aside: normalise on all channels in three kernels (fused.py); statistics as NumPy's."""
        if self.training:
            mean = x.mean(axis=self.axes, keepdims=True)
            centred = x - mean
            var = (centred * centred).mean(axis=self.axes, keepdims=True)
            self._update_running(mean.reshape(-1), var.reshape(-1), x.size // self.num_features)
        else:
            mean, var = self._shape(self.running_mean), self._shape(self.running_var)
        self.inv_std = fused.inverse_std(var, self.eps)
        self.x_hat, y = fused.bn_normalise(x, mean, self.inv_std, self._shape(self.weight.data),
                                           self._shape(self.bias.data))
        return y

    def _update_running(self, mean, var, count):
        """running = (1 - momentum) running + momentum value over `count` values per channel; the
        variance unbiased (x count / (count - 1), PyTorch's)."""
        unbias = count / (count - 1)
        for running, value, factor in ((self.running_mean, mean, 1.0), (self.running_var, var, unbias)):
            if fused.gpu():
                fused.running_update(running, value, self.momentum, factor)   # GPU aside: the two lines below
                continue
            running *= 1 - self.momentum
            running += self.momentum * value * factor

    def backward(self, dout):
        """dbeta = sum(dout), dgamma = sum(dout x_hat) per channel; dx = gamma/std (dout - mean(dout)
        - x_hat mean(dout x_hat)) in training (mean and variance depend on x too: the two mean terms
        are their gradients), dx = gamma/std dout in evaluation (the statistics are constants)."""
        xp, axes, training = B.xp, self.axes, self.training

        def input_grad(dout, x_hat, gamma, inv_std, dbeta, dgamma, dx):      # channels c of each
            xp.sum(dout, axis=axes, keepdims=True, out=dbeta)                # (1, c, 1, 1) for images
            xp.sum(dout * x_hat, axis=axes, keepdims=True, out=dgamma)
            scale = gamma * inv_std                                          # gamma / std
            if not training:
                xp.multiply(dout, scale, out=dx)
                return
            count = dout.size // dout.shape[1]
            xp.multiply(scale, dout - dbeta / count - x_hat * (dgamma / count), out=dx)
        if fused.gpu():
            return self._backward_gpu(dout)                     # GPU aside: dx in one kernel (fused.py)
        dbeta, dgamma, dx = self._stat(dout), self._stat(dout), fused.like(dout)
        threads.per_channel(input_grad, dout, self.x_hat, self._shape(self.weight.data), self.inv_std,
                            dbeta, dgamma, dx, touched=3 * dout.nbytes)            # CPU aside: channels on 2 cores
        self.bias.grad, self.weight.grad = dbeta.reshape(-1), dgamma.reshape(-1)  # (C,)
        return dx

    def _backward_gpu(self, dout):
        """GPU aside: input_grad on all channels, dx in one kernel (fused.py)."""
        axes, gamma = self.axes, self._shape(self.weight.data)
        self.bias.grad = dout.sum(axis=axes)
        self.weight.grad = (dout * self.x_hat).sum(axis=axes)
        if not self.training:
            return dout * (gamma * self.inv_std)
        count = dout.size // self.num_features
        return fused.bn_input_grad(dout, self.x_hat, gamma, self.inv_std, self._shape(self.bias.grad),
                                   self._shape(self.weight.grad), count)


class BatchNorm1d(_BatchNorm):
    """x (N, C): statistics over the batch."""
    axes, ndim = (0,), 2


class BatchNorm2d(_BatchNorm):
    """x (N, C, H, W): statistics per channel over batch and pixels (not per activation)."""
    axes, ndim = (0, 2, 3), 4


class ReLU(Module):
    """y = max(x, 0); backward passes dout where y > 0 (the output is kept, not a mask)."""

    def forward(self, x):
        def relu(x, y):                                    # channels c of each
            B.xp.maximum(x, 0, out=y)
        self.y = fused.like(x)                             # laid out like x (fused.like says why)
        threads.per_channel(relu, x, self.y, touched=2 * x.nbytes)          # CPU aside: channels on 2 cores
        return self.y

    def forward_add(self, a, b):
        """relu(a + b), the end of a residual block."""
        def add_relu(a, b, y):                             # channels c of each
            B.xp.add(a, b, out=y)
            B.xp.maximum(y, 0, out=y)
        if fused.gpu():
            self.y = fused.add_relu(a, b)                  # GPU aside: add_relu as one kernel
            return self.y
        self.y = fused.like(a)
        threads.per_channel(add_relu, a, b, self.y, touched=3 * a.nbytes)   # CPU aside: channels on 2 cores
        return self.y

    def backward(self, dout):
        def relu_grad(dout, y, dx):                        # channels c of each
            B.xp.multiply(dout, y > 0, out=dx)             # dout where y > 0
        if fused.gpu():
            return fused.relu_backward(dout, self.y)       # GPU aside: relu_grad as one kernel
        dx = fused.like(dout)
        threads.per_channel(relu_grad, dout, self.y, dx, touched=3 * dout.nbytes)   # CPU aside: 2 cores
        return dx


class _Pool2d(Module):
    """Non-overlapping pooling (stride == kernel), PyTorch floor mode: extra rows/cols dropped."""

    def __init__(self, kernel_size, stride=None):
        if stride is not None and stride != kernel_size:
            raise ValueError(f"{type(self).__name__} supports stride == kernel_size only, "
                             f"got kernel {kernel_size}, stride {stride}")
        self.kernel_size = kernel_size

    def _check(self, x):
        """Remember x's shape; return an empty output (N, C, OH, OW), channel-major like a conv's."""
        check_input(self, x, 4)
        k = self.kernel_size
        n, c, h, w = x.shape
        if h // k < 1 or w // k < 1:
            raise ValueError(f"{type(self).__name__}({k}) got an input smaller than the window: {tuple(x.shape)}")
        self.x_shape = x.shape
        return B.xp.empty((c, n, h // k, w // k), dtype=x.dtype).transpose(1, 0, 2, 3)

    def _windows(self, x):
        """(N, c, H, W) -> (N, c, OH, OW, k*k), one row per pooling window."""
        k = self.kernel_size
        n, c, h, w = x.shape
        out_h, out_w = h // k, w // k
        x = x[:, :, :out_h * k, :out_w * k].reshape(n, c, out_h, k, out_w, k)    # (N, c, OH, k, OW, k)
        return x.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, out_h, out_w, k * k)  # (N, c, OH, OW, k*k)

    def _unwindows(self, dwin, dx):
        """Adjoint of _windows: (N, c, OH, OW, k*k) -> dx (N, c, H, W), zeros where rows were dropped."""
        k = self.kernel_size
        n, c, out_h, out_w = dwin.shape[:4]
        d = dwin.reshape(n, c, out_h, out_w, k, k).transpose(0, 1, 2, 4, 3, 5)  # (N, c, OH, k, OW, k)
        dx[...] = 0
        dx[:, :, :out_h * k, :out_w * k] = d.reshape(n, c, out_h * k, out_w * k)

    def _dx(self, dtype):
        # NCHW in memory: the BatchNorm below sums this gradient in memory order, so the layout sets
        # its rounding; a change of layout would change results in the last bits.
        return B.xp.empty(self.x_shape, dtype=dtype)


class MaxPool2d(_Pool2d):
    def _views(self, x):
        """The k*k strided views of x (N, c, H, W), each (N, c, OH, OW): one per position in the window."""
        k = self.kernel_size
        out_h, out_w = x.shape[2] // k, x.shape[3] // k
        return [x[:, :, i:out_h * k:k, j:out_w * k:k] for i in range(k) for j in range(k)]

    def forward(self, x):
        """y = the maximum of each k x k window: the running maximum of its k*k strided views."""
        def max_pool(x, y):                                # channels c of each
            views = self._views(x)
            y[...] = views[0]
            for view in views[1:]:
                B.xp.maximum(y, view, out=y)
        self.x, self.y = x, self._check(x)                 # x is kept by the ReLU before it anyway
        if fused.gpu():
            return self._forward_gpu(x)                    # GPU aside: one argmax over the windows
        threads.per_channel(max_pool, x, self.y, touched=2 * x.nbytes)      # CPU aside: channels on 2 cores
        return self.y

    def backward(self, dout):
        """Each window's gradient goes to its maximum, the first view that equals it (as PyTorch);
        rows and columns that floor mode dropped get none."""
        def max_pool_grad(dout, x, y, dx):                 # channels c of each
            taken = B.xp.zeros(y.shape, dtype=bool)
            for view, dx_view in zip(self._views(x), self._views(dx)):
                hit = (view == y) & ~taken
                taken |= hit
                B.xp.multiply(dout, hit, out=dx_view)
        dx, (h, w) = self._dx(dout.dtype), self.x_shape[2:]
        if fused.gpu():
            return self._backward_gpu(dout, dx)            # GPU aside: from the forward's argmax
        if h % self.kernel_size or w % self.kernel_size:
            dx[...] = 0
        threads.per_channel(max_pool_grad, dout, self.x, self.y, dx, touched=8 * dout.nbytes)  # CPU aside
        return dx

    def _forward_gpu(self, x):
        """GPU aside: the same maxima (and their first positions) from one argmax over the windows:
        a few kernel launches where the k*k views take several per view (docs/SPEED.md)."""
        windows = self._windows(x)                                      # (N, C, OH, OW, k*k)
        self.argmax = windows.argmax(axis=-1)                           # (N, C, OH, OW)
        self.y = B.xp.take_along_axis(windows, self.argmax[..., None], axis=-1)[..., 0]
        return self.y

    def _backward_gpu(self, dout, dx):
        onehot = B.xp.arange(self.kernel_size ** 2) == self.argmax[..., None]   # (N, C, OH, OW, k*k)
        self._unwindows(onehot * dout[..., None], dx)
        return dx


class AvgPool2d(_Pool2d):
    def forward(self, x):
        """y = the mean of each k x k window."""
        def avg_pool(x, y):                                # channels c of each
            self._windows(x).mean(axis=-1, out=y)          # (N, c, OH, OW, k*k) -> (N, c, OH, OW)
        out = self._check(x)
        threads.per_channel(avg_pool, x, out, touched=2 * x.nbytes)         # CPU aside: channels on 2 cores
        return out

    def backward(self, dout):
        """Each window's k*k inputs get dout / k^2."""
        k2 = self.kernel_size ** 2

        def avg_pool_grad(dout, dx):                       # channels c of each
            self._unwindows(B.xp.broadcast_to(dout[..., None] / k2, dout.shape + (k2,)), dx)
        dx = self._dx(dout.dtype)
        threads.per_channel(avg_pool_grad, dout, dx, touched=8 * dout.nbytes)  # CPU aside: channels on 2 cores
        return dx


class Flatten(Module):
    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)       # (N, C, H, W) -> (N, C*H*W)

    def backward(self, dout):
        return dout.reshape(self.x_shape)


class Sequential(Module):
    """Layers applied in order; built from modules or (name, module) pairs."""

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = layers[0]
        self._names = []
        for index, layer in enumerate(layers):
            name, module = layer if isinstance(layer, tuple) else (str(index), layer)
            setattr(self, name, module)
            self._names.append(name)

    def layers(self):
        return [getattr(self, name) for name in self._names]

    def children(self):
        return [(name, getattr(self, name)) for name in self._names]

    def forward(self, x):
        for layer in self.layers():
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers()):
            dout = layer.backward(dout)
            if dout is None:            # the input layer (input_grad False): nothing below needs a gradient
                return None
        return dout

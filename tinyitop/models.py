"""The paper's networks (Liu et al. 2021, Section 4): MLP, VGG-16 ("vgg-c"), ResNet-18/34/50 (CIFAR).

Shapes and parameter names follow the PyTorch reference models; `sparsify` turns any of them
into its truly sparse twin (CSR weights) with per-layer densities from `tinyitop.init`.
"""
import math

from tinyitop.blocks import BasicBlock, Bottleneck
from tinyitop.init import layer_densities
from tinyitop.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d,
                             Module, ReLU, Sequential)
from tinyitop.sparse import SparseConv2d, SparseLinear


def check_sparsity(sparsity):
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def mlp(in_features, hidden=(1024, 512), num_classes=10, sparsity=None, init="erk", dense_layers=(),
        fan_in_scaling=False):
    """Flatten -> fc1 -> ReLU -> ... -> fcK (logits). Input (N, ...) with prod(...) = in_features.

    With `sparsity`, every fc layer not in `dense_layers` is built directly as a SparseLinear (no dense
    weight is ever allocated, which matters for wide layers), with densities from `init`.
    """
    sizes = [in_features, *hidden, num_classes]
    shapes = {f"fc{i + 1}": (sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)}
    unknown = set(dense_layers) - set(shapes)
    if unknown:
        raise ValueError(f"dense_layers names no layer of this model: {sorted(unknown)} (its layers: {', '.join(shapes)})")
    densities = {}
    if sparsity is not None:
        check_sparsity(sparsity)
        densities = layer_densities({n: s for n, s in shapes.items() if n not in dense_layers}, 1 - sparsity, init)
    layers = [("flatten", Flatten())]
    for i, (name, (n_out, n_in)) in enumerate(shapes.items()):
        if name in densities:
            layers.append((name, SparseLinear(n_in, n_out, densities[name], fan_in_scaling=fan_in_scaling)))
        else:
            layers.append((name, Linear(n_in, n_out)))
        if i < len(shapes) - 1:
            layers.append((f"relu{i + 1}", ReLU()))
    return Sequential(layers)


def mlp_cifar(num_classes=10):
    """The paper's CIFAR-10 MLP: 3072 -> 1024 -> 512 -> 10 (3,675,136 weights, 1,546 biases)."""
    return mlp(3 * 32 * 32, (1024, 512), num_classes)


# 'C' = a 1x1 conv that the reference still pads by 1, so the map grows by 2 (8->10, 5->7, 3->5).
VGG16_C_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, "C256", "M", 512, 512, "C512", "M",
                512, 512, "C512", "M"]


def scaled(channels, width):
    """A layer's channel count at `width` (1.0: the paper's network), at least 1 channel."""
    return max(1, int(round(channels * width)))


def check_width(width):
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")


def vgg16(num_classes=10, width=1.0):
    """VGG-16 'vgg-c' of the sparselearning reference; 32x32 input -> 512x2x2 = 2048 features.

    `width` scales every channel count (0.25: 16-32-64-128-128 channels, 512 -> 128 features);
    the classifier's hidden 512 units scale with it."""
    check_width(width)
    features, in_channels, index = [], 3, 0
    for item in VGG16_C_PLAN:
        if item == "M":
            features.append((str(index), MaxPool2d(2)))
            index += 1
            continue
        kernel = 1 if isinstance(item, str) else 3
        channels = scaled(int(item[1:]) if isinstance(item, str) else item, width)
        features += [(str(index), Conv2d(in_channels, channels, kernel, padding=1)),
                     (str(index + 1), BatchNorm2d(channels)), (str(index + 2), ReLU())]
        index += 3
        in_channels = channels
    hidden = scaled(512, width)
    classifier = [("0", Linear(in_channels * 2 * 2, hidden)), ("1", ReLU()), ("2", BatchNorm1d(hidden)),
                  ("3", Linear(hidden, hidden)), ("4", ReLU()), ("5", BatchNorm1d(hidden)),
                  ("6", Linear(hidden, num_classes))]
    return Sequential([("features", Sequential(features)), ("flatten", Flatten()),
                       ("classifier", Sequential(classifier))])


def _resnet(block, num_blocks, num_classes, width):
    """CIFAR ResNet: 3x3 stem (no max-pool), four stages, 4x4 average pool, bias-free Linear.
    `width` scales the stages' channels (0.25: 16-32-64-128)."""
    check_width(width)
    in_planes = scaled(64, width)
    layers = [("conv1", Conv2d(3, in_planes, 3, padding=1, bias=False)), ("bn1", BatchNorm2d(in_planes)),
              ("relu", ReLU())]
    stage_planes = [scaled(p, width) for p in (64, 128, 256, 512)]
    for stage, (planes, count, stride) in enumerate(zip(stage_planes, num_blocks, (1, 2, 2, 2))):
        blocks = []
        for i in range(count):
            blocks.append((str(i), block(in_planes, planes, stride if i == 0 else 1)))
            in_planes = planes * block.expansion
        layers.append((f"layer{stage + 1}", Sequential(blocks)))
    layers += [("avgpool", AvgPool2d(4)), ("flatten", Flatten()),
               ("linear", Linear(in_planes, num_classes, bias=False))]
    return Sequential(layers)


def resnet18(num_classes=10, width=1.0):
    return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, width)


def resnet34(num_classes=10, width=1.0):
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes, width)


def resnet50(num_classes=10, width=1.0):
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes, width)


def _owners(module):
    """(owner, attribute, child) for every sub-module, following real attributes (for replacement)."""
    for key, value in list(vars(module).items()):
        if isinstance(value, Module):
            yield module, key, value
            yield from _owners(value)


def sparsify(model, sparsity, init="erk", dense_layers=(), fan_in_scaling=False, masks=None):
    """Swap every Linear/Conv2d not named in `dense_layers` for its truly sparse twin, in place.

    Densities per layer come from `init` (uniform / er / erk) for the global `sparsity`; weights are
    drawn afresh from the same distribution as the dense layer's (PyTorch default), at exact
    positions. Layers in `dense_layers` (e.g. ["conv1", "linear"]) stay dense and out of R_s.
    With `masks` ({name: sorted flat positions}, e.g. from SNIP or LTH) those positions are kept
    instead, with the dense layer's current values (this is how LTH rewinds).
    """
    check_sparsity(sparsity)
    names = {id(m): name for name, m in model.named_modules()}
    targets = [(owner, key, child) for owner, key, child in _owners(model)
               if type(child) in (Linear, Conv2d) and names.get(id(child)) not in dense_layers]
    unknown = set(dense_layers) - {names.get(id(c)) for _, _, c in _owners(model)}
    if unknown:
        raise ValueError(f"dense_layers names no layer of this model: {sorted(unknown)}")
    shapes = {names[id(child)]: tuple(child.weight.shape) for _, _, child in targets}   # conv: (O, C, KH, KW)
    if masks is None:
        densities = layer_densities(shapes, 1 - sparsity, init)
    else:
        densities = {name: max(int(masks[name].size), 1) / math.prod(shape) for name, shape in shapes.items()}
    for owner, key, child in targets:
        density = densities[names[id(child)]]
        has_bias = child.bias is not None
        if isinstance(child, Conv2d):
            new = SparseConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                               child.padding, bias=has_bias, density=density, fan_in_scaling=fan_in_scaling)
        else:
            new = SparseLinear(child.in_features, child.out_features, density, bias=has_bias,
                               fan_in_scaling=fan_in_scaling)
        new.astype(child.dtype())
        if masks is not None:
            positions = masks[names[id(child)]]
            new.weight.set_topology(positions, child.weight.data.reshape(-1)[positions])
        setattr(owner, key, new)
    return model


MODELS = {"vgg16": vgg16, "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def skip_input_gradient(model):
    """Mark the first Linear/Conv2d (dense or sparse) as the input layer: its backward computes its
    weight gradients but not dL/dx, which nothing uses (PyTorch skips it the same way). That saves
    one product and one col2im per step; returns the layer's name."""
    for name, module in model.named_modules():
        if isinstance(module, (Linear, Conv2d, SparseLinear)):
            module.input_grad = False
            return name
    return None

"""Residual blocks of ResNet (He et al. 2016): BasicBlock (two 3x3 convs) and Bottleneck (1x1-3x3-1x1).

out = relu(branch(x) + shortcut(x)); the shortcut is the identity, or 1x1 conv + BN when the
shape changes. Backward sums the gradients of the two paths, which is all a skip connection does.
"""
from tinyitop.layers import BatchNorm2d, Conv2d, Module, ReLU, Sequential


def _shortcut(in_planes, out_planes, stride):
    if stride == 1 and in_planes == out_planes:
        return None  # identity
    return Sequential([("0", Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)),
                       ("1", BatchNorm2d(out_planes))])


class _Residual(Module):
    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        return self.relu_out.forward_add(self.branch.forward(x), skip)   # relu(branch + skip)

    def backward(self, dout):
        d_sum = self.relu_out.backward(dout)      # the same gradient flows into both paths
        dx = self.branch.backward(d_sum)
        if self.shortcut is None:
            return dx + d_sum
        return dx + self.shortcut.backward(d_sum)

    def children(self):
        # Flatten the branch so parameter names read like PyTorch's: layer1.0.conv1.weight
        kids = self.branch.children()
        if self.shortcut is not None:
            kids.append(("shortcut", self.shortcut))
        return kids


class BasicBlock(_Residual):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        self.branch = Sequential([
            ("conv1", Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)),
            ("bn1", BatchNorm2d(planes)), ("relu1", ReLU()),
            ("conv2", Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)),
            ("bn2", BatchNorm2d(planes))])
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu_out = ReLU()


class Bottleneck(_Residual):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        self.branch = Sequential([
            ("conv1", Conv2d(in_planes, planes, 1, bias=False)),
            ("bn1", BatchNorm2d(planes)), ("relu1", ReLU()),
            ("conv2", Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)),
            ("bn2", BatchNorm2d(planes)), ("relu2", ReLU()),
            ("conv3", Conv2d(planes, planes * self.expansion, 1, bias=False)),
            ("bn3", BatchNorm2d(planes * self.expansion))])
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu_out = ReLU()

"""PyTorch twins of the benchmarked networks, for an optional comparison column (never a dependency).

`masked` trains the way the ITOP reference does: a dense weight times a fixed 0/1 mask in the
forward pass, the mask re-applied to the weight after each SGD step. Imported only when torch is.
"""
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    if __name__ == "__main__":               # run by hand, e.g. with --help
        print("error: benchmarks/torch_reference.py holds the PyTorch twins that bench_sparse.py adds as a "
              "column when torch imports; it needs torch (pip install torch in a separate venv)", file=sys.stderr)
        sys.exit(2)
    raise

VGG_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, "C256", "M", 512, 512, "C512", "M", 512, 512, "C512", "M"]


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _scaled(channels, width):
    return max(1, int(round(channels * width)))       # as tinyitop.models.scaled


def resnet18(classes=10, width=1.0):
    cin = _scaled(64, width)
    layers = [nn.Conv2d(3, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU()]
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        cout = _scaled(cout, width)
        layers += [_Basic(cin, cout, stride), _Basic(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AvgPool2d(4), nn.Flatten(), nn.Linear(cin, classes, bias=False))


def vgg16(classes=10, width=1.0):
    """The reference's 'vgg-c' (classifier Linear -> ReLU -> BatchNorm1d, as tinyitop.models.vgg16)."""
    layers, cin = [], 3
    for item in VGG_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        kernel, cout = (1, int(item[1:])) if isinstance(item, str) else (3, item)   # "C": 1x1 padded by 1
        cout = _scaled(cout, width)
        layers += [nn.Conv2d(cin, cout, kernel, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    hidden = _scaled(512, width)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * 4, hidden), nn.ReLU(), nn.BatchNorm1d(hidden),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.BatchNorm1d(hidden), nn.Linear(hidden, classes))


def mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1])] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def step_ms(model, input_shape, classes, steps, device, densities=None):
    """ms per SGD step (batch input_shape[0]), synchronised; masked like the reference if densities."""
    torch.manual_seed(0)
    model = model.to(device)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks = None
    if densities is not None:
        masks = [(torch.rand_like(w) < d).float() for w, d in zip(weights, densities)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(*input_shape, device=device)
    y = torch.randint(0, classes, (input_shape[0],), device=device)

    def one():
        optimizer.zero_grad(set_to_none=True)
        if masks is not None:                        # the reference: weight * mask before the forward
            with torch.no_grad():
                for w, m in zip(weights, masks):
                    w.mul_(m)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if masks is not None:                        # and the mask re-applied after the step
            with torch.no_grad():
                for w, m in zip(weights, masks):
                    w.mul_(m)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    for _ in range(3):
        one()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    return 1e3 * (time.perf_counter() - start) / steps


if __name__ == "__main__":
    print(__doc__.strip())
    print("Used by benchmarks/bench_sparse.py (the PyTorch column); nothing to run on its own.")

"""Does every sparse layer take its faster path? Each layer of the paper's networks, timed both ways.

For every sparse layer of the paper MLP, VGG-16 and ResNet-18 at sparsity 0.95 (ERK), batch 128:
the products at that layer's own shape, density and column count (M = batch, or batch x output
pixels for a conv), on both paths, and the ratio of the path tinyitop chose to the faster one
(1.00 = it chose the faster; the goal is <= 1.05). Products and gradient are judged separately,
as they are chosen separately (tinyitop/sparse_kernels.py, choose_paths).
  python benchmarks/bench_paths.py [--models mlp,vgg16,resnet18] [--repeats 3]
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from bench_breakeven import time_products  # noqa: E402
from bench_options import Parser, choices_list, repeats  # noqa: E402
from tinyitop import backend as B, mlp  # noqa: E402
from tinyitop.models import resnet18, sparsify, vgg16  # noqa: E402
from tinyitop.topology import sparse_layers  # noqa: E402


def build(name):
    B.seed(0)
    if name == "mlp":
        return mlp(3072, (1024, 512), 10, sparsity=0.95, init="erk"), (128, 3072)
    model = {"vgg16": vgg16, "resnet18": resnet18}[name](10)
    sparsify(model, 0.95, "erk")
    return model, (128, 3, 32, 32)


def layer_columns(model, input_shape):
    """{layer name: M}, the columns each sparse layer multiplies, from one forward pass."""
    model.forward(B.to_device(np.random.default_rng(0).standard_normal(input_shape), dtype="float32"))
    return {n: (layer.x_t if hasattr(layer, "x_t") else layer.cols).shape[1] for n, layer in sparse_layers(model).items()}


def parse(argv=None):
    """The options, checked before any timing."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,vgg16,resnet18", help="comma-separated: mlp, vgg16, resnet18")
    parser.add_argument("--repeats", type=repeats, default=3)
    args = parser.parse_args(argv)
    args.models = ",".join(choices_list(args.models, ("mlp", "vgg16", "resnet18"), "--models"))
    return args


def main(argv=None):
    args = parse(argv)
    print(B.describe(), "| ms per product, median | ratio = chosen path / faster path")
    worst = []
    for name in args.models.split(","):
        model, input_shape = build(name)
        columns = layer_columns(model, input_shape)
        print(f"\n{name}, sparsity 0.95 ERK")
        print(f"{'layer':22s} {'shape':>11s} {'density':>8s} {'M':>7s} {'csr fwd+dx':>11s} {'dense fwd+dx':>13s} "
              f"{'chosen':>7s} {'ratio':>6s} {'gather':>8s} {'dense+take':>11s} {'chosen':>11s} {'ratio':>6s}")
        for layer_name, layer in sparse_layers(model).items():
            weight = layer.weight
            if weight.density >= 1:        # made dense by ERK: the dense path, nothing to choose
                continue
            n_out, n_in = weight.shape
            ms = time_products(n_out, n_in, columns[layer_name], weight.density, args.repeats)
            product, gradient = layer.paths()
            csr, dense = ms["fwd csr"] + ms["dx csr"], ms["fwd dense"] + ms["dx dense"]
            gather, take = ms["dW gather"], ms["dW dense+take"]
            product_ratio = (csr if product == "csr" else dense) / min(csr, dense)
            gradient_ratio = (gather if gradient == "gather" else take) / min(gather, take)
            worst += [product_ratio, gradient_ratio]
            print(f"{layer_name:22s} {f'{n_out}x{n_in}':>11s} {weight.density:8.4f} {columns[layer_name]:7d} "
                  f"{csr:11.2f} {dense:13.2f} {product:>7s} {product_ratio:6.2f} {gather:8.2f} {take:11.2f} "
                  f"{gradient:>11s} {gradient_ratio:6.2f}", flush=True)
    print(f"\nworst ratio over all layers and both choices: {max(worst):.2f} (goal <= 1.05); "
          f"{sum(r > 1.05 for r in worst)} of {len(worst)} choices above 1.05")


if __name__ == "__main__":
    main()

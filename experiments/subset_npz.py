"""Write a class-balanced random subset of a packed data set (.npz from `python -m tinyitop pack-images`).

The reduced conv presets (experiments/cifar10_vgg_*.json) train on 10,000 training and 2,000 test
images of CIFAR-10, so that a whole preset fits a few hours of a 2-core CPU:
    python experiments/subset_npz.py ~/data/cifar10.npz ~/data/cifar10-10k.npz --train 10000 --test 2000
The same input, sizes and --seed give the same subset (drawn per class with NumPy's default_rng).
"""
import argparse
import os
import sys
import zipfile

import numpy as np


def balanced(labels, count, rng):
    """`count` sorted indices, the same number from each class (as near as `count` allows)."""
    classes = np.unique(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:count // len(classes) + (i < count % len(classes))]
             for i, c in enumerate(classes)]
    return np.sort(np.concatenate(picks))


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("source"), p.add_argument("out")
    p.add_argument("--train", type=int, required=True, help="training images to keep")
    p.add_argument("--test", type=int, required=True, help="test images to keep")
    p.add_argument("--seed", type=int, default=0, help="which subset (default: %(default)s)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.source):
        fail(f"{args.source} is not a file (make one with python -m tinyitop pack-images)")
    if os.path.exists(args.out):
        fail(f"{args.out} exists; choose another name (nothing is overwritten)")
    try:
        with np.load(args.source, allow_pickle=False) as archive:
            data = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        fail(f"{args.source} is not a readable .npz of arrays (damaged, or another kind of file)")
    missing = [k for k in ("train_x", "train_y", "test_x", "test_y") if k not in data]
    if missing:
        fail(f"{args.source} lacks {', '.join(missing)}: is it a data set packed by python -m tinyitop pack-images?")
    for split, count in (("train", args.train), ("test", args.test)):
        if not 1 <= count <= len(data[f"{split}_y"]):
            fail(f"--{split} must be in [1, {len(data[f'{split}_y'])}], got {count}")
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.train), ("test", args.test)):
        keep = balanced(data[f"{split}_y"], count, rng)
        data[f"{split}_x"], data[f"{split}_y"] = data[f"{split}_x"][keep], data[f"{split}_y"][keep]
    np.savez(args.out, **data)       # mean/std and class names travel unchanged
    print(f"wrote {args.out}: {args.train} train / {args.test} test images from {args.source}")


if __name__ == "__main__":
    main()

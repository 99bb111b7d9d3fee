"""Write a class-balanced random subset of a packed data set (.npz from `python -m tinyitop pack-images`).

The reduced conv presets (experiments/cifar10_vgg_*.json) train on 10,000 training and 2,000 test
images of CIFAR-10, so that a whole preset fits a few hours of a 2-core CPU:
    python experiments/subset_npz.py ~/data/cifar10.npz ~/data/cifar10-10k.npz --train 10000 --test 2000
The same input, sizes and --seed give the same subset (drawn per class with NumPy's default_rng).
"""
import os
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tinyitop.atomic import atomic_write, check_target  # noqa: E402
from tinyitop.options import Parser, fail, seed  # noqa: E402


def balanced(labels, count, rng, split="train"):
    """`count` sorted indices, the same number from each class (as near as `count` allows); a class
    with fewer images than its share is refused in one line, never silently short."""
    classes = np.unique(labels)
    shares = [count // len(classes) + (i < count % len(classes)) for i in range(len(classes))]
    for c, share in zip(classes, shares):
        if np.count_nonzero(labels == c) < share:
            fail(f"--{split} {count}: class {c} has {np.count_nonzero(labels == c)} {split} images, fewer than its "
                 f"share of {share}; ask for at most {len(classes) * min(np.bincount(np.searchsorted(classes, labels)))}")
    picks = [rng.permutation(np.flatnonzero(labels == c))[:share] for c, share in zip(classes, shares)]
    return np.sort(np.concatenate(picks))


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("source"), p.add_argument("out")
    p.add_argument("--train", type=int, required=True, help="training images to keep")
    p.add_argument("--test", type=int, required=True, help="test images to keep")
    p.add_argument("--seed", type=seed, default=0, help="which subset (default: %(default)s)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.source):
        fail(f"{args.source} is not a file (make one with python -m tinyitop pack-images)")
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"     # what np.savez would write
    try:
        check_target(out, overwrite_option=None, create_folder=False)    # exists, a folder, unwritable
    except OSError as err:
        fail(str(err))
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
        keep = balanced(data[f"{split}_y"], count, rng, split)
        data[f"{split}_x"], data[f"{split}_y"] = data[f"{split}_x"][keep], data[f"{split}_y"][keep]
    atomic_write(out, lambda f: np.savez(f, **data))      # mean/std and class names travel unchanged
    print(f"wrote {out}: {len(data['train_y'])} train / {len(data['test_y'])} test images from {args.source}")


if __name__ == "__main__":
    main()

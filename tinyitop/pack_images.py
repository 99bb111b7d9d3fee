"""A folder of images -> the .npz data set that `--dataset PATH.npz` reads.

    python -m tinyitop pack-images DIR OUT.npz

DIR/train/<class>/* and DIR/test/<class>/* (PNG or JPEG; class folders sorted by name give the
labels 0, 1, ...). Images are decoded by matplotlib's reader (Pillow underneath), so no new
dependency; all must share one size. The npz holds train_x, test_x (uint8, N x C x H x W),
train_y, test_y (int64) and classes, and is written atomically. `normalise_as="cifar10"` also
stores the mean and std the ITOP reference normalises CIFAR-10 by (else the loader computes
them from the training images).
"""
import os

import numpy as np

from tinyitop.data import CIFAR, DatasetError
from tinyitop.metrics import progress
from tinyitop.atomic import atomic_write, check_target

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _class_folders(folder):
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder} is not a folder: expected <class>/ folders of images inside it")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise DatasetError(f"{folder} has no <class>/ folders")
    return classes


def _files(folder, classes):
    """[(path, label)] for every image of every class, in a stable order."""
    files, empty = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        found = [(os.path.join(class_dir, f), label) for f in sorted(os.listdir(class_dir))
                 if f.lower().endswith(IMAGE_SUFFIXES)]
        files += found
        if not found:
            empty.append(name)
    if files and empty:       # a class without images would still get a label and an output unit
        raise DatasetError(f"{folder}: class folder(s) {', '.join(empty)} hold no PNG or JPEG images: "
                           "fill or remove them")
    if not files:
        raise DatasetError(f"no PNG or JPEG images under {folder}/<class>/")
    return files


def read_image(path):
    """One image -> uint8 (C, H, W). PNGs decode to floats in [0, 1], JPEGs to uint8."""
    import matplotlib.image
    try:
        image = matplotlib.image.imread(path)
    except (OSError, ValueError, SyntaxError) as err:     # Pillow raises SyntaxError for some broken files
        raise DatasetError(f"cannot decode {path}: {err}") from None
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]                           # grey (H, W) -> (H, W, 1)
    elif image.shape[2] == 4:
        image = image[:, :, :3]                             # RGBA -> RGB
    return image.transpose(2, 0, 1)                         # (H, W, C) -> (C, H, W)


def _read_split(folder, classes, description):
    files = _files(folder, classes)
    first = read_image(files[0][0])
    images = np.empty((len(files),) + first.shape, dtype=np.uint8)      # (N, C, H, W)
    labels = np.array([label for _, label in files], dtype=np.int64)
    for i, (path, _) in enumerate(progress(files, len(files), True, description, unit="image")):
        image = first if i == 0 else read_image(path)
        if image.shape != first.shape:
            raise DatasetError(f"{path} has shape {image.shape} (C, H, W) but {files[0][0]} has {first.shape}: "
                               f"all images must have one size")
        images[i] = image
    return images, labels


def pack(folder, out, normalise_as=None, overwrite=False):
    """Read DIR/train and DIR/test into one .npz at `out`; returns `out`."""
    check_target(out, overwrite, suffix=".npz")          # before reading 60,000 images, not after
    classes = _class_folders(os.path.join(folder, "train"))
    test_classes = _class_folders(os.path.join(folder, "test"))
    if test_classes != classes:
        raise DatasetError(f"{folder}/train and {folder}/test have different class folders: "
                           f"{classes} vs {test_classes}")
    train_x, train_y = _read_split(os.path.join(folder, "train"), classes, "train")
    test_x, test_y = _read_split(os.path.join(folder, "test"), classes, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(f"train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}")
    arrays = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=np.array(classes))
    if normalise_as is not None:
        channels = train_x.shape[1]
        if channels != len(CIFAR[normalise_as]["mean"]):
            raise DatasetError(f"--normalise-as {normalise_as} gives statistics for {len(CIFAR[normalise_as]['mean'])} "
                               f"channels, but these images have {channels}: drop --normalise-as (the statistics "
                               "are then computed from the training images)")
        arrays.update(mean=np.array(CIFAR[normalise_as]["mean"]), std=np.array(CIFAR[normalise_as]["std"]))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write(out, lambda f: np.savez(f, **arrays))     # a killed pack never leaves a half-written npz
    print(f"wrote {out}: {len(train_x)} train / {len(test_x)} test images of shape {train_x.shape[1:]}, "
          f"{len(classes)} classes ({', '.join(classes)})")
    return out

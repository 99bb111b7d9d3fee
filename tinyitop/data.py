"""Data: CIFAR-10/100, Fashion-MNIST, a synthetic set and the user's own .npz; normalisation,
augmentation (the ITOP reference's reflect-pad crop + flip), batches.

Files are read on the host with NumPy (this is where data enters the program); each batch is
moved to the device once, by `batches`. Downloads are verified against the published MD5 before
anything is extracted or unpickled; a corrupt or partial file is reported and fetched again.
"""
import gzip
import hashlib
import math
import os
import pickle
import tarfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from tinyitop import backend as B
from tinyitop import fused

CIFAR = {
    "cifar10": dict(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a", classes=10,
                    train=[f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
                    test=["cifar-10-batches-py/test_batch"], label_key=b"labels",
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)),
    "cifar100": dict(url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85", classes=100,
                     train=["cifar-100-python/train"], test=["cifar-100-python/test"], label_key=b"fine_labels",
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_FILES = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                 "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                 "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                 "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
# Debian's dataset-fashion-mnist package (recompressed, so its .gz checksums differ from the
# official ones: the IDX headers and sizes are checked instead).
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "synthetic")
NPZ_KEYS = ("train_x", "train_y", "test_x", "test_y")     # required; `mean`, `std`, `classes` optional
PAD_MODES = ("reflect", "zero")


class DatasetError(RuntimeError):
    """A data set is missing, cannot be downloaded, or is corrupt."""


@dataclass
class Dataset:
    """Images as uint8 NCHW on the host, labels as int64, plus how to normalise them."""
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple
    std: tuple
    augment: bool

    @property
    def image_shape(self):
        return self.train_x.shape[1:]

    @property
    def in_features(self):
        return int(np.prod(self.image_shape))


def default_data_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tinyitop")


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _move_aside(path):
    """A file that is not the expected one is renamed, never deleted: it may be the user's only copy."""
    aside = path + ".bad-md5"
    number = 1
    while os.path.exists(aside):
        number += 1
        aside = f"{path}.bad-md5.{number}"
    os.replace(path, aside)
    return aside


def fetch(url, path, md5):
    """Make sure `path` holds the file with this MD5: reuse it, or download (twice at most)."""
    kept = ""
    if os.path.exists(path):
        found = md5sum(path)
        if found == md5:
            return path
        aside = _move_aside(path)
        kept = f" The file that was at {path} (MD5 {found}, expected {md5}) is kept as {aside}."
        print(f"{path} has MD5 {found}, not the expected {md5} (corrupt, partial or another version): "
              f"moved it to {aside}; downloading the file again")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for attempt in (1, 2):
        partial = path + ".part"
        try:
            print(f"downloading {url} -> {path}")
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
        except OSError as err:
            if os.path.exists(partial):
                os.remove(partial)
            raise DatasetError(f"could not download {url} ({err}). Download it by hand on a machine with "
                               f"internet access and place it at {path} (MD5 {md5}).{kept}") from None
        if md5sum(partial) == md5:
            os.replace(partial, path)   # only a verified file ever gets the final name
            return path
        os.remove(partial)
        print(f"download of {url} has the wrong MD5 (attempt {attempt})")
    raise DatasetError(f"{url} twice gave a file whose MD5 is not {md5}; place a good copy at {path}")


def load_cifar(name, data_dir=None):
    spec = CIFAR[name]
    data_dir = data_dir or default_data_dir()
    archive = fetch(spec["url"], os.path.join(data_dir, os.path.basename(spec["url"])), spec["md5"])
    parts = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for split in ("train", "test"):
                xs, ys = [], []
                for member in spec[split]:
                    # Safe to unpickle: the archive's MD5 matched the published one above.
                    batch = pickle.load(tar.extractfile(member), encoding="bytes")
                    xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                    ys.append(np.asarray(batch[spec["label_key"]], dtype=np.int64))
                parts[split] = (np.concatenate(xs), np.concatenate(ys))
    except (tarfile.TarError, KeyError, EOFError, pickle.UnpicklingError) as err:
        raise DatasetError(f"{archive} passed its checksum but could not be read: {err}") from err
    return Dataset(name, *parts["train"], *parts["test"], spec["classes"], spec["mean"], spec["std"], augment=True)


def read_idx(path):
    """An IDX file (gzip or not) -> uint8 array, with its header checked."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:       # zlib.error: a damaged byte inside the gzip stream
        raise DatasetError(f"{path} is not a readable IDX file ({type(err).__name__}: {err}): "
                           f"replace it with a good copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated or corrupt: header says {dims}, "
                           f"found {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(data_dir=None):
    """From data_dir when one is given (MD5-checked, downloaded if missing), else from Debian's
    package when installed, else downloaded into the default cache folder."""
    if data_dir is None and all(os.path.exists(os.path.join(FASHION_SYSTEM_DIR, f)) for f in FASHION_FILES):
        paths = {f: os.path.join(FASHION_SYSTEM_DIR, f) for f in FASHION_FILES}
    else:
        folder = os.path.join(data_dir or default_data_dir(), "fashion-mnist")
        paths = {f: fetch(FASHION_URL + f, os.path.join(folder, f), md5) for f, md5 in FASHION_FILES.items()}
    arrays = {f: read_idx(p) for f, p in paths.items()}
    train_x = arrays["train-images-idx3-ubyte.gz"][:, None]       # (60000, 1, 28, 28)
    test_x = arrays["t10k-images-idx3-ubyte.gz"][:, None]         # (10000, 1, 28, 28)
    train_y = arrays["train-labels-idx1-ubyte.gz"].astype(np.int64)
    test_y = arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or train_y.max() > 9:
        raise DatasetError("Fashion-MNIST images and labels do not match")
    return Dataset("fashion-mnist", train_x, train_y, test_x, test_y, 10, FASHION_MEAN, FASHION_STD, augment=False)


def make_synthetic(num_train=4000, num_test=1000, num_classes=10, image_shape=(3, 32, 32), seed=0,
                   label_noise=0.1):
    """A learnable toy set shaped like CIFAR-10: each class is a random prototype image (one shared
    image plus a faint class pattern) under heavy noise, as uint8. A `label_noise` fraction of the
    labels is replaced by a random class, so no model separates it completely."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(40, 215, size=tuple(image_shape)) + rng.uniform(-12, 12, (num_classes,) + tuple(image_shape))

    def draw(n):
        y = rng.integers(0, num_classes, n)
        x = prototypes[y] + rng.normal(0, 100, size=(n,) + tuple(image_shape))
        relabel = rng.random(n) < label_noise
        y[relabel] = rng.integers(0, num_classes, int(relabel.sum()))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)
    channels = image_shape[0]
    return Dataset("synthetic", *draw(num_train), *draw(num_test), num_classes,
                   (0.5,) * channels, (0.25,) * channels, augment=False)


def is_npz(name):
    return str(name).lower().endswith(".npz")


def _channels_first(images, path, key):
    """uint8 images (N, C, H, W), (N, H, W, C) or (N, H, W) -> (N, C, H, W). The channel axis is
    the shorter of axes 1 and 3 (channels are few, image sides are not)."""
    if images.ndim == 3:
        return images[:, None]                                   # (N, H, W) -> (N, 1, H, W)
    if images.ndim != 4:
        raise DatasetError(f"{path}: {key} must be images (N, C, H, W) or (N, H, W, C), got shape {images.shape}")
    if images.shape[3] < images.shape[1]:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))   # (N, H, W, C) -> (N, C, H, W)
    return images


def load_npz(path):
    """The user's own data set: an .npz with train_x, train_y, test_x, test_y (uint8 images, integer
    labels) and optionally mean, std (per channel, of x/255) and classes (names)."""
    if os.path.isdir(path):
        raise DatasetError(f"data set {path} is a folder, not an .npz file (python -m tinyitop pack-images "
                           "makes one from a folder of images)")
    if not os.path.isfile(path):
        raise DatasetError(f"data set file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        why = "neither an .npz archive nor plain arrays" if "pickle" in str(err) else str(err)
        raise DatasetError(f"{path} is not a readable .npz file ({why}): is it damaged, or another kind of file?") from None
    try:
        with archive:
            missing = [k for k in NPZ_KEYS if k not in archive.files]
            if missing:
                raise DatasetError(f"{path} lacks {', '.join(missing)}: it needs the arrays {', '.join(NPZ_KEYS)}")
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:   # object arrays, torn members
        raise DatasetError(f"{path}: cannot read its arrays without pickle ({err})") from None
    for key in ("train_x", "test_x"):
        if arrays[key].dtype != np.uint8:
            raise DatasetError(f"{path}: {key} must be uint8 images (0-255), got dtype {arrays[key].dtype}")
        arrays[key] = _channels_first(arrays[key], path, key)
    for key in ("train_y", "test_y"):
        labels = arrays[key]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"{path}: {key} must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
        arrays[key] = labels.astype(np.int64)
        x_key = key[:-1] + "x"
        if len(labels) != len(arrays[x_key]):
            raise DatasetError(f"{path}: {len(arrays[x_key])} images in {x_key} but {len(labels)} labels in {key}")
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise DatasetError(f"{path}: train images {arrays['train_x'].shape[1:]} and test images "
                           f"{arrays['test_x'].shape[1:]} differ in shape")
    if len(arrays["train_x"]) == 0 or len(arrays["test_x"]) == 0:
        raise DatasetError(f"{path}: the training and the test set must not be empty")
    highest = int(max(arrays["train_y"].max(), arrays["test_y"].max()))
    num_classes = len(arrays["classes"]) if "classes" in arrays else highest + 1
    if "classes" not in arrays and num_classes > MAX_CLASSES_WITHOUT_NAMES:
        raise DatasetError(f"{path}: labels go up to {highest}, i.e. {num_classes} classes, and the file has no "
                           f"'classes' array naming them: add one if that many classes is meant (a label array "
                           f"of class indices 0..K-1 is expected)")
    if min(arrays["train_y"].min(), arrays["test_y"].min()) < 0 or highest >= num_classes:
        raise DatasetError(f"{path}: labels must lie in [0, {num_classes}), found "
                           f"{min(arrays['train_y'].min(), arrays['test_y'].min())}..{highest}")
    absent = absent_classes(arrays["train_y"], num_classes)
    if absent and "classes" not in arrays:   # a stray label (255 among 0-9) would build a 256-class model
        raise DatasetError(f"{path}: labels 0..{highest} make {num_classes} classes, but {absent} have no training "
                           "image: a stray label? Labels must be class indices 0..K-1, each present in train_y "
                           "(or name the classes in a 'classes' array; the run then says which have no image)")
    channels = arrays["train_x"].shape[1]
    if ("mean" in arrays) != ("std" in arrays):      # one without the other would silently be ignored
        given, lacking = ("mean", "std") if "mean" in arrays else ("std", "mean")
        raise DatasetError(f"{path} has {given} but no {lacking}: give both (per channel, of x/255) or neither "
                           "(then both are computed from the training images)")
    if "mean" in arrays and "std" in arrays:
        mean, std = (tuple(float(v) for v in np.ravel(arrays[k])) for k in ("mean", "std"))
        if (len(mean) != channels or len(std) != channels or not all(map(math.isfinite, mean + std))
                or min(std) <= 0):
            raise DatasetError(f"{path}: mean and std need {channels} finite values each (std > 0), got {mean}, {std}")
    else:      # per channel over the training images, in the units of normalise(): x / 255
        scaled = arrays["train_x"].transpose(1, 0, 2, 3).reshape(channels, -1)    # (C, N*H*W)
        mean = tuple(float(scaled[c].mean(dtype=np.float64)) / 255 for c in range(channels))
        std = tuple(float(scaled[c].std(dtype=np.float64)) / 255 or 1.0 for c in range(channels))
    name = os.path.splitext(os.path.basename(path))[0]
    return Dataset(name, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                   num_classes, mean, std, augment=False)


def absent_classes(train_labels, num_classes):
    """'' if every class 0..K-1 has a training image, else which do not ("classes 3, 7" / "10 classes: 10 ... 254")."""
    absent = np.setdiff1d(np.arange(num_classes), np.asarray(train_labels))
    if not absent.size:
        return ""
    if absent.size <= 8:
        return "class " + ", ".join(map(str, absent)) if absent.size == 1 else "classes " + ", ".join(map(str, absent))
    return f"{absent.size} classes ({absent[0]} ... {absent[-1]})"


def load(name, data_dir=None, synthetic_shape=(3, 32, 32)):
    """A Dataset by name, or from the user's .npz file; `synthetic_shape` sets the image shape of
    the synthetic set (e.g. 3x32x32 for the convolutional models)."""
    if is_npz(name):
        return load_npz(name)
    if name in CIFAR:
        return load_cifar(name, data_dir)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "synthetic":
        return make_synthetic(image_shape=synthetic_shape)
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} or a PATH.npz")


# Labels are class indices 0..K-1; a file whose labels run past this without a 'classes' array is far
# more likely to hold ids or raw values than 100k classes (the output layer would need gigabytes).
MAX_CLASSES_WITHOUT_NAMES = 100_000


def fingerprint(data):
    """A content hash of a data set (images, labels, statistics, class count), not of its path: a
    resumed run refuses data that changed under the same file name (~0.3 s for CIFAR-10)."""
    digest = hashlib.sha256()
    for array in (data.train_x, data.train_y, data.test_x, data.test_y):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(repr((tuple(data.mean), tuple(data.std), data.num_classes)).encode())
    return digest.hexdigest()[:16]


def split_validation(x, y, fraction, seed):
    """A fixed random `fraction` of the training set held out (no augmentation on it); fraction 0
    trains on everything (the reference's protocol) with an empty validation set."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(fraction * len(x)))
    return (x[order[n_val:]], y[order[n_val:]]), (x[order[:n_val]], y[order[:n_val]])


def normalise(images, mean, std):
    """uint8 (N, C, H, W) -> float32, (x / 255 - mean) / std per channel."""
    mean = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return (images.astype(np.float32) / np.float32(255) - mean) / std


def crop_draws(rng, n, pad=4):
    """The host draws of one augmented batch: crop offsets (2, n) in [0, 2 pad] and flips (n,) bool."""
    offsets = rng.integers(0, 2 * pad + 1, size=(2, n))
    return offsets, rng.random(n) < 0.5


def augment(images, rng, pad=4, pad_mode="reflect", draws=None):
    """Random crop after padding by `pad`, and random horizontal flip, for a whole batch.

    The ITOP reference pads by reflection (torchvision RandomCrop(32, 4, padding_mode='reflect'),
    which is NumPy's 'reflect': the edge pixel is not repeated). Zero padding puts black borders
    into the input distribution itself, which costs an MLP accuracy; it is kept as an option.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {pad_mode!r} (choose from {', '.join(PAD_MODES)})")
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                    mode="reflect" if pad_mode == "reflect" else "constant")           # (N, C, H+2p, W+2p)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W)
    (dy, dx), flip = draws if draws is not None else crop_draws(rng, n, pad)
    crops = windows[np.arange(n), :, dy, dx]                                          # (N, C, H, W)
    crops[flip] = crops[flip][..., ::-1]
    return crops


def batches(x, y, batch_size, mean, std, rng=None, train_augment=False, pad_mode="reflect"):
    """Yield (images, labels) on the device; shuffled (and augmented if asked) when `rng` is given.

    The host generator makes every draw (order, then each batch's crop offsets and flips, in that
    sequence) on both backends, so NumPy and CuPy see the same batches. On CuPy the data set is
    uploaded once, the epoch's draws once per epoch, and each batch is cut, cropped, flipped and
    normalised on the GPU (`_device_batch`): no host work on images and no host-to-device copy per
    step, which would also make the host wait for the GPU at every batch.
    """
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    starts = range(0, len(x), batch_size)
    draws = [crop_draws(rng, len(order[s:s + batch_size])) for s in starts] if train_augment else None
    if B.resolve() == "cupy":
        yield from _device_batches(x, y, batch_size, mean, std, order, draws, pad_mode)
        return
    for i, start in enumerate(starts):
        index = order[start:start + batch_size]
        images = x[index]
        if train_augment:
            images = augment(images, rng, pad_mode=pad_mode, draws=draws[i])
        yield B.to_device(normalise(images, mean, std)), B.to_device(y[index])


def _device_batches(x, y, batch_size, mean, std, order, draws, pad_mode):
    """`batches` on the GPU: three uploads per epoch (order, draws, statistics), none per batch."""
    x_dev, y_dev = _resident(x), _resident(y)
    order_dev = B.to_device(order)
    if draws is not None:   # (3, len(x)): crop rows, crop columns, flip, batch after batch
        draws = B.to_device(np.concatenate([np.concatenate([offsets, flip[None].astype(offsets.dtype)])
                                            for offsets, flip in draws], axis=1))
    mean = B.to_device(np.asarray(mean, dtype=np.float32)[None, :, None, None])    # (1, C, 1, 1)
    std = B.to_device(np.asarray(std, dtype=np.float32)[None, :, None, None])
    for start in range(0, len(x), batch_size):
        index = order_dev[start:start + batch_size]
        batch_draws = None if draws is None else draws[:, start:start + batch_size]
        yield _device_batch(x_dev, index, batch_draws, mean, std, pad_mode), y_dev[index]


_resident_arrays = {}     # id(host array) -> (host array, device copy): train, val and test sets


def _resident(host):
    """The device copy of a host data array, uploaded on first use (a few arrays at most)."""
    key = id(host)
    if key not in _resident_arrays or _resident_arrays[key][0] is not host:
        if len(_resident_arrays) >= 4:                     # SNIP's one-batch arrays must not pile up
            _resident_arrays.pop(next(iter(_resident_arrays)))
        _resident_arrays[key] = (host, B.to_device(host))
    return _resident_arrays[key][1]


def _device_batch(x_dev, index, draws, mean, std, pad_mode, pad=4):
    """On the device: images x_dev[index] (uint8 NCHW), cropped at the offsets draws[0:2] and flipped
    where draws[2] (None: no augmentation), then normalised -> float32 (N, C, H, W). The same as
    `augment` + `normalise` on the host, as one pad, one gather and one fused normalisation."""
    xp = B.xp
    images = x_dev[index]                                                    # (N, C, H, W) uint8
    if draws is not None:
        n, c, h, w = images.shape
        padded = xp.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                        mode="reflect" if pad_mode == "reflect" else "constant")   # (N, C, H+2p, W+2p)
        rows = draws[0][:, None] + xp.arange(h)                               # (N, H)
        cols = draws[1][:, None] + xp.arange(w)                               # (N, W)
        cols = xp.where(draws[2][:, None] == 1, cols[:, ::-1], cols)          # a flip reads columns backwards
        images = padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                        rows[:, None, :, None], cols[:, None, None, :]]       # (N, C, H, W), one gather
    if not fused.gpu():                          # the stand-in for CuPy on a CPU
        return (images.astype(mean.dtype) / mean.dtype.type(255) - mean) / std
    return fused.normalise(images, mean, std)    # GPU aside: the line above as one kernel (fused.py)

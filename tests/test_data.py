"""Loaders on small files written in the official formats; offline and corrupt paths; augmentation."""
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest

from tinyitop import data


def _cifar10_archive(path, n_per_batch=4):
    """A tiny cifar-10-python.tar.gz in the official layout (pickled dicts of uint8 rows)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for member in data.CIFAR["cifar10"]["train"] + data.CIFAR["cifar10"]["test"]:
            batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                     b"labels": list(rng.integers(0, 10, n_per_batch))}
            raw = pickle.dumps(batch)
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")
    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)


def test_cifar10_official_format_is_read(tmp_path, monkeypatch, offline):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _cifar10_archive(archive)
    monkeypatch.setitem(data.CIFAR["cifar10"], "md5", md5)
    ds = data.load("cifar10", str(tmp_path))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64 and ds.num_classes == 10
    assert ds.augment and ds.mean == (0.4914, 0.4822, 0.4465)


def test_offline_error_names_url_and_destination(tmp_path, offline):
    with pytest.raises(data.DatasetError) as err:
        data.load("cifar100", str(tmp_path))
    message = str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert str(tmp_path / "cifar-100-python.tar.gz") in message and "eb9058c3a382ffc7106e4002c42a8d85" in message


def test_corrupt_archive_is_detected_and_fetched_again(tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.tar.gz"
    md5 = _cifar10_archive(good)
    monkeypatch.setitem(data.CIFAR["cifar10"], "md5", md5)
    target = tmp_path / "cifar-10-python.tar.gz"
    target.write_bytes(good.read_bytes()[:100])        # a partial download
    served = []

    def serve(url, timeout):
        served.append(url)
        return io.BytesIO(good.read_bytes())
    monkeypatch.setattr(data.urllib.request, "urlopen", serve)
    ds = data.load("cifar10", str(tmp_path))
    assert served == [data.CIFAR["cifar10"]["url"]] and len(ds.train_x) == 20
    assert "corrupt, partial or another version" in capsys.readouterr().out
    assert (tmp_path / "cifar-10-python.tar.gz.bad-md5").read_bytes() == good.read_bytes()[:100]   # kept, not deleted


def test_corrupt_archive_without_network_is_an_error_not_a_load(tmp_path, monkeypatch, offline):
    good = tmp_path / "good.tar.gz"
    monkeypatch.setitem(data.CIFAR["cifar10"], "md5", _cifar10_archive(good))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(data.DatasetError, match="could not download"):
        data.load("cifar10", str(tmp_path))
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()      # the bad file was not kept


def test_download_with_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"garbage"))
    with pytest.raises(data.DatasetError, match="MD5"):
        data.fetch("https://example.invalid/file", str(tmp_path / "file"), "0" * 32)
    assert os.listdir(tmp_path) == []


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_its_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "ok.gz", images)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "ok.gz")), images)
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28)) + b"\0" * 100)
    with pytest.raises(data.DatasetError, match="truncated"):
        data.read_idx(str(tmp_path / "short.gz"))
    (tmp_path / "bad.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(data.DatasetError):
        data.read_idx(str(tmp_path / "bad.gz"))


@pytest.mark.skipif(not os.path.exists(data.FASHION_SYSTEM_DIR), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian():
    ds = data.load("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y).tolist() == [6000] * 10


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.load("mnist")


@pytest.mark.parametrize("pad_mode, numpy_mode", [("reflect", "reflect"), ("zero", "constant")])
def test_augment_crops_and_flips_within_the_padded_image(pad_mode, numpy_mode):
    rng = np.random.default_rng(0)
    images = np.arange(2 * 1 * 5 * 5, dtype=np.uint8).reshape(2, 1, 5, 5) + 1
    seen, zeros = set(), 0
    for _ in range(40):
        out = data.augment(images, rng, pad=2, pad_mode=pad_mode)
        assert out.shape == images.shape and out.dtype == np.uint8
        zeros += int((out == 0).sum())
        for i in range(2):
            padded = np.pad(images[i, 0], 2, mode=numpy_mode)
            windows = [padded[y:y + 5, x:x + 5] for y in range(5) for x in range(5)]
            matches = [k for k, w in enumerate(windows)
                       if np.array_equal(out[i, 0], w) or np.array_equal(out[i, 0], w[:, ::-1])]
            assert matches
            seen.update(matches)
    assert len(seen) > 10                       # the crop really moves
    assert (zeros > 0) == (pad_mode == "zero")   # pixels are >= 1: only zero padding brings black borders


def test_reflect_padding_matches_torchvision_reflect():
    """torchvision's padding_mode='reflect' mirrors without repeating the edge: [1 2 3] -> [3 2 | 1 2 3 | 2 1].
    The corner crop (offset 0, 0) of a 1-pixel-padded image shows exactly that."""
    image = np.array([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]], dtype=np.uint8)     # (1, 1, 3, 3)

    class CornerNoFlip:
        def integers(self, low, high, size):
            return np.zeros(size, dtype=np.int64)

        def random(self, n):
            return np.ones(n)
    out = data.augment(image, CornerNoFlip(), pad=1, pad_mode="reflect")
    np.testing.assert_array_equal(out[0, 0], [[5, 4, 5], [2, 1, 2], [5, 4, 5]])
    with pytest.raises(ValueError, match="pad mode"):
        data.augment(image, CornerNoFlip(), pad=1, pad_mode="edge")


def test_normalise_and_batches_move_to_device_once():
    x = np.full((5, 3, 2, 2), 255, dtype=np.uint8)
    y = np.arange(5)
    out = data.normalise(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.dtype == np.float32 and np.allclose(out, 2.0)
    got = list(data.batches(x, y, 2, (0.5,) * 3, (0.25,) * 3))
    assert [len(b[1]) for b in got] == [2, 2, 1] and np.concatenate([b[1] for b in got]).tolist() == y.tolist()


def test_validation_split_is_fixed_and_disjoint():
    x, y = np.arange(100)[:, None], np.arange(100)
    (tx, ty), (vx, vy) = data.split_validation(x, y, 0.1, seed=3)
    assert len(vy) == 10 and len(ty) == 90 and not set(vy) & set(ty)
    assert data.split_validation(x, y, 0.1, seed=3)[1][1].tolist() == vy.tolist()


@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
@pytest.mark.parametrize("train_augment", [False, True])
def test_device_batches_equal_host_batches(any_backend, pad_mode, train_augment):
    """On CuPy the data set is uploaded once and cut/cropped/flipped/normalised on the device from
    the host generator's draws: the same batches as the host pipeline, on either backend."""
    from tinyitop import backend as B
    x = np.random.default_rng(5).integers(0, 256, (37, 3, 6, 6), dtype=np.uint8)
    y = np.arange(37)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    got = list(data.batches(x, y, 8, mean, std, np.random.default_rng(9), train_augment, pad_mode))
    rng = np.random.default_rng(9)                                  # the host pipeline, by hand
    order = rng.permutation(37)
    for start, (images, labels) in zip(range(0, 37, 8), got):
        index = order[start:start + 8]
        expected = x[index]
        if train_augment:
            expected = data.augment(expected, rng, pad_mode=pad_mode)
        assert isinstance(images, B.xp.ndarray) and images.dtype == np.float32
        np.testing.assert_allclose(B.to_host(images), data.normalise(expected, mean, std), rtol=1e-6)
        np.testing.assert_array_equal(B.to_host(labels), y[index])

"""Data the user brings: .npz data sets, the image-folder packer, and the reference's protocol details
(LR milestones, training without a validation split). Small files generated here; no real data."""
import json
import os

import numpy as np
import pytest

from tinyitop import data
from tinyitop.cli import main as cli_main
from tinyitop.metrics import read_jsonl
from tinyitop.optim import MultiStepLR
from tinyitop.pack_images import pack
from tinyitop.train import Config, train


def _write_npz(path, n_train=40, n_test=12, shape=(3, 8, 8), num_classes=4, channels_last=False, seed=0, **extra):
    """A learnable CIFAR-like npz: a prototype image per class plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(30, 220, size=(num_classes,) + shape)

    def draw(n):
        y = np.arange(n) % num_classes
        x = np.clip(prototypes[y] + rng.normal(0, 30, size=(n,) + shape), 0, 255).astype(np.uint8)
        return (x.transpose(0, 2, 3, 1) if channels_last else x), y
    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    arrays = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


@pytest.mark.parametrize("channels_last", [False, True])
def test_npz_images_are_read_as_nchw_with_computed_statistics(tmp_path, channels_last):
    path = _write_npz(tmp_path / "mine.npz", channels_last=channels_last)
    ds = data.load(path)
    assert ds.name == "mine" and ds.train_x.shape == (40, 3, 8, 8) and ds.test_x.shape == (12, 3, 8, 8)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64 and ds.num_classes == 4
    raw = np.load(path)["train_x"]
    nchw = raw.transpose(0, 3, 1, 2) if channels_last else raw
    np.testing.assert_array_equal(ds.train_x, nchw)
    expected_mean = nchw.astype(np.float64).mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(ds.mean, expected_mean, rtol=1e-9)
    assert not ds.augment                                      # off unless asked for


def test_npz_mean_std_and_classes_are_taken_when_given(tmp_path):
    path = _write_npz(tmp_path / "c.npz", num_classes=3, mean=np.array([0.1, 0.2, 0.3]),
                      std=np.array([0.5, 0.5, 0.5]))
    ds = data.load(path)
    assert ds.mean == (0.1, 0.2, 0.3) and ds.std == (0.5, 0.5, 0.5)
    named = _write_npz(tmp_path / "n.npz", num_classes=3, classes=np.array(["a", "b", "c", "d", "e"]))
    assert data.load(named).num_classes == 5                   # classes may outnumber the labels seen
    assert data.absent_classes(data.load(named).train_y, 5) == "classes 3, 4"   # and the run says which


@pytest.mark.parametrize("change, message", [
    (dict(train_y=None), "lacks train_y"),
    (dict(train_x=np.zeros((4, 3, 8, 8), dtype=np.float32)), "must be uint8"),
    (dict(train_x=np.zeros((4, 64), dtype=np.uint8)), "must be images"),
    (dict(train_y=np.zeros((5,), dtype=np.int64)), "labels in train_y"),
    (dict(test_y=np.array([0.5] * 12)), "integer array"),
    (dict(test_y=np.full(12, -1)), "labels must lie in"),
    (dict(classes=np.array(["a", "b"])), "labels must lie in"),
    (dict(train_y=np.r_[np.arange(39) % 3, 255]), r"0\.\.255 make 256 classes, but 252 classes \(3 \.\.\. 254\)"),
    (dict(train_y=np.arange(40) % 4 // 2 * 2), "classes 1, 3 have no training image"),      # gaps below the top
    (dict(test_x=np.zeros((12, 3, 9, 9), dtype=np.uint8)), "differ in shape"),
    (dict(mean=np.array([0.5]), std=np.array([0.2])), "need 3 finite values"),
    (dict(test_y=np.array(["x"] * 12, dtype=object)), "without pickle"),
])
def test_bad_npz_files_give_one_clear_line(tmp_path, change, message):
    base = _write_npz(tmp_path / "ok.npz")
    arrays = dict(np.load(base))
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    if "train_x" in change and "train_y" not in change and change["train_x"].shape[0] == 4:
        arrays["train_y"] = arrays["train_y"][:4]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DatasetError, match=message) as err:
        data.load(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_or_corrupt_npz(tmp_path):
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.load(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(os.urandom(300))
    with pytest.raises(data.DatasetError, match="not a readable .npz"):
        data.load(str(tmp_path / "junk.npz"))


def _image_folder(root, size=(6, 5), png=True):
    """root/{train,test}/{cat,dog}/ with a few small images; returns the pixel arrays written."""
    import matplotlib.image
    rng = np.random.default_rng(3)
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for name in ("dog", "cat"):          # created out of order: labels follow sorted names
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)     # (H, W, 3)
                path = folder / (f"{i}.png" if png else f"{i}.jpg")
                matplotlib.image.imsave(path, pixels)
                written[str(path)] = pixels
    return written


def test_pack_images_round_trips_png_pixels_and_labels(tmp_path, capsys):
    written = _image_folder(tmp_path / "imgs")
    out = pack(str(tmp_path / "imgs"), str(tmp_path / "packed.npz"))
    ds = data.load(out)
    assert ds.train_x.shape == (6, 3, 6, 5) and ds.test_x.shape == (4, 3, 6, 5)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.num_classes == 2
    assert np.load(out)["classes"].tolist() == ["cat", "dog"]
    first_cat = written[str(tmp_path / "imgs" / "train" / "cat" / "0.png")]
    np.testing.assert_array_equal(ds.train_x[0], first_cat.transpose(2, 0, 1))     # PNG is lossless
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]                       # written atomically


def test_pack_images_via_cli_with_reference_statistics_and_jpeg(tmp_path, capsys):
    _image_folder(tmp_path / "imgs", png=False)
    code = cli_main(["pack-images", str(tmp_path / "imgs"), str(tmp_path / "j.npz"), "--normalise-as", "cifar10"])
    assert code == 0
    ds = data.load(str(tmp_path / "j.npz"))
    assert ds.train_x.shape == (6, 3, 6, 5) and ds.mean == data.CIFAR["cifar10"]["mean"]


def test_pack_images_errors(tmp_path, capsys):
    _image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "test" / "cat").rename(tmp_path / "imgs" / "test" / "kitten")
    assert cli_main(["pack-images", str(tmp_path / "imgs"), str(tmp_path / "x.npz")]) == 2
    assert "different class folders" in capsys.readouterr().err
    assert cli_main(["pack-images", str(tmp_path / "nothing"), str(tmp_path / "x.npz")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    _image_folder(tmp_path / "odd")
    import matplotlib.image
    matplotlib.image.imsave(tmp_path / "odd" / "train" / "dog" / "9.png", np.zeros((7, 7, 3), dtype=np.uint8))
    assert cli_main(["pack-images", str(tmp_path / "odd"), str(tmp_path / "x.npz")]) == 2
    assert "all images must have one size" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.npz")
    _image_folder(tmp_path / "hollow")
    (tmp_path / "hollow" / "train" / "bird").mkdir()                   # a class folder with no images
    (tmp_path / "hollow" / "test" / "bird").mkdir()
    assert cli_main(["pack-images", str(tmp_path / "hollow"), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bird" in err[0] and "hold no PNG or JPEG" in err[0]


@pytest.mark.parametrize("epochs, multiplier", [(1, 1), (2, 1), (3, 2), (10, 1), (25, 3), (160, 1), (200, 1),
                                                (200, 2), (250, 1), (250, 5), (37, 4), (101, 3)])
def test_lr_milestones_follow_the_reference_formula(epochs, multiplier):
    """The reference: milestones=[int(args.epochs / 2) * args.multiplier, int(args.epochs * 3 / 4) * args.multiplier];
    tinyitop clamps a milestone at epoch 0 to 1 so that a one-epoch run starts at the base rate."""
    reference = [int(epochs / 2) * multiplier, int(epochs * 3 / 4) * multiplier]
    schedule = MultiStepLR(0.1, epochs, multiplier)
    assert schedule.milestone_epochs == [max(1, m) for m in reference]
    lrs = [schedule(e) for e in range(epochs * multiplier)]
    assert lrs[0] == 0.1
    for e, lr in enumerate(lrs):
        assert lr == pytest.approx(0.1 * 0.1 ** sum(e >= max(1, m) for m in reference))


def test_lr_milestones_differ_from_rounding_where_the_reference_truncates():
    assert MultiStepLR(0.1, 250, 1).milestone_epochs == [125, 187]          # round(187.5) would give 188
    assert MultiStepLR(0.1, 250, 5).milestone_epochs == [625, 935]          # round(937.5) would give 938


def test_train_on_npz_with_augmentation_and_no_validation_split(tmp_path):
    path = _write_npz(tmp_path / "d.npz", n_train=64, n_test=16)
    run = train(Config(dataset=path, hidden=(16,), epochs=3, update_interval=2, lr=0.05, sparsity=0.8,
                       batch_size=16, augment=True, val_fraction=0, out=str(tmp_path / "run"), progress=False))
    rows = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert rows[-1]["iteration"] == 3 * 4                           # all 64 images trained on, 4 batches/epoch
    assert all(row["val_acc"] is None for row in rows)
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["best_val_acc"] is None and summary["test_acc_at_best_val"] is None
    assert summary["best_test_acc"] == max(row["test_acc"] for row in rows)
    assert summary["last_test_acc"] == rows[-1]["test_acc"]
    assert run.data.name == "d"


def test_augmentation_changes_the_training_batches(tmp_path):
    """--augment really feeds cropped/flipped images: the same seed gives other losses without it."""
    path = _write_npz(tmp_path / "d.npz", n_train=64, n_test=16)
    losses = {}
    for flag in (True, False):
        train(Config(dataset=path, hidden=(16,), epochs=1, lr=0.05, sparsity=0.8, batch_size=16, augment=flag,
                     out=str(tmp_path / str(flag)), progress=False))
        losses[flag] = read_jsonl(str(tmp_path / str(flag) / "metrics.jsonl"))[0]["train_loss"]
    assert losses[True] != losses[False]


@pytest.mark.parametrize("model", ["vgg16", "resnet18"])
def test_conv_models_train_on_cifar_shaped_npz_from_the_cli(tmp_path, model, capsys):
    path = _write_npz(tmp_path / "c.npz", n_train=8, n_test=4, shape=(3, 32, 32), channels_last=True)
    code = cli_main(["train", "--model", model, "--dataset", path, "--augment", "--epochs", "1", "--batch-size", "4",
                     "--sparsity", "0.9", "--update-interval", "1", "--out", str(tmp_path / model),
                     "--no-progress", "--no-plots"])
    assert code == 0
    rows = read_jsonl(str(tmp_path / model / "metrics.jsonl"))
    assert rows[0]["rs"] > 0.1                                    # a topology update happened
    assert f"{model} on c:" in capsys.readouterr().out


def test_cli_rejects_a_dataset_that_is_neither_name_nor_npz(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--dataset", "mnist"])
    assert exit_info.value.code == 2 and "PATH.npz" in capsys.readouterr().err


def test_pack_images_checks_its_output_before_reading_any_image(tmp_path, capsys):
    """A folder, a name without .npz, an existing file (left unchanged), a file where a folder should
    be: one line each, before the images are read; --overwrite replaces an existing file."""
    _image_folder(tmp_path / "imgs")
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "mine.npz").write_bytes(b"the user's own file")
    (tmp_path / "afile").write_text("x")
    cases = {"folder.npz": "is a folder", "packed": "must end in .npz", "mine.npz": "exists already",
             "afile/sub/out.npz": "is a file, not a folder"}
    for out, why in cases.items():
        assert cli_main(["pack-images", str(tmp_path / "imgs"), str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert (tmp_path / "mine.npz").read_bytes() == b"the user's own file"
    assert cli_main(["pack-images", str(tmp_path / "imgs"), str(tmp_path / "mine.npz"), "--overwrite"]) == 0
    assert data.load(str(tmp_path / "mine.npz")).train_x.shape == (6, 3, 6, 5)


def test_an_atomic_write_onto_a_folder_names_the_folder(tmp_path):
    from tinyitop.atomic import atomic_write
    (tmp_path / "results.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=r"cannot write .*results\.csv: it is a folder"):
        atomic_write(str(tmp_path / "results.csv"), lambda f: f.write(b"x"))
    assert os.listdir(tmp_path) == ["results.csv"]                  # no partial file left behind

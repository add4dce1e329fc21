"""Dataset registry: the embedded default, ImageFolder/ImageNet, CIFAR and fake data.

Disk datasets are exercised with tiny files written in their real layouts, through the real
loaders, so a layout or format mistake shows up here rather than on a cluster.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from prunecli.config.schema import DataConfig
from prunecli.data import DATASETS, DatasetBundle, balanced_order, build_datasets, describe_datasets
from prunecli.data.embedded import (
    EMBEDDED_FILE,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist,
    read_arrays,
)
from prunecli.errors import ConfigError, DataError, UnknownNameError

EMBEDDED_PATH = Path(__file__).resolve().parents[1] / "prunecli" / "data" / "embedded"


def labels_of(dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


def to_uint8(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Undo normalisation of a gray image (exact for unresized images)."""
    return (x * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- embedded default


@pytest.fixture(scope="module")
def fashion() -> DatasetBundle:
    return build_datasets(DataConfig())


def test_registry_lists_every_dataset() -> None:
    names = [n for n, _ in describe_datasets()]
    assert names == sorted(names)
    assert {"fashion_mnist", "imagenet", "imagefolder", "cifar10", "cifar100", "fake"} <= set(names)
    assert all(desc for _, desc in describe_datasets())
    assert DataConfig().name == "fashion_mnist" and "fashion_mnist" in DATASETS


def test_embedded_file_is_small_and_well_formed() -> None:
    path = EMBEDDED_PATH / EMBEDDED_FILE
    assert 5e6 < path.stat().st_size < 12e6
    header, arrays = read_arrays(path.read_bytes())
    assert arrays["train_images"].shape == (20000, 28, 28)
    assert arrays["test_images"].shape == (4000, 28, 28)
    assert header["mean"][0] == pytest.approx(FASHION_MNIST_MEAN[0], abs=1e-4)
    assert header["std"][0] == pytest.approx(FASHION_MNIST_STD[0], abs=1e-4)
    # the first 2000 of each class of the official set: indices increase within a class
    src, lab = arrays["train_source_index"], arrays["train_labels"]
    for c in range(10):
        assert np.all(np.diff(src[lab == c].astype(np.int64)) > 0)
    assert (EMBEDDED_PATH / "LICENSE-fashion-mnist").is_file()


def test_embedded_dataset_loads(fashion: DatasetBundle) -> None:
    assert (len(fashion.train), len(fashion.val)) == (20000, 4000)
    assert (fashion.num_classes, fashion.channels, fashion.image_size) == (10, 1, 28)
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    x, y = fashion.val[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert load_fashion_mnist() is load_fashion_mnist()  # decompressed once per process


def test_embedded_classes_balanced_and_interleaved(fashion: DatasetBundle) -> None:
    data = load_fashion_mnist()
    assert Counter(data["train_labels"].tolist()) == {c: 2000 for c in range(10)}
    assert Counter(data["test_labels"].tolist()) == {c: 400 for c in range(10)}
    assert torch.equal(data["train_labels"], torch.arange(20000) % 10)  # any prefix balanced
    assert labels_of(fashion.val)[:20] == list(range(10)) * 2


def test_holdout_validates_on_training_images_never_trained_on() -> None:
    """data.val_split=holdout: the last 2,000 training images, not in the training set (where
    hyperparameters are chosen without looking at the test images)."""
    from omegaconf import OmegaConf

    from prunecli.data.embedded import fashion_mnist

    held = fashion_mnist(OmegaConf.structured(DataConfig(val_split="holdout", train_size=500)))
    data = load_fashion_mnist()
    assert (len(held.train), len(held.val)) == (500, 2000)
    assert torch.equal(held.val.images, data["train_images"][18000:])
    assert Counter(labels_of(held.val)) == {c: 200 for c in range(10)}
    whole = fashion_mnist(OmegaConf.structured(DataConfig(val_split="holdout")))
    assert len(whole.train) == 18000  # the held-out images are not trained on
    with pytest.raises(ConfigError, match="test or holdout"):
        fashion_mnist(OmegaConf.structured(DataConfig(val_split="val2017")))


def test_mean_std_constants_match_data(fashion: DatasetBundle) -> None:
    pixels = load_fashion_mnist()["train_images"].double() / 255
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_MEAN[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_STD[0], abs=1e-3)
    assert fashion.mean == FASHION_MNIST_MEAN and fashion.std == FASHION_MNIST_STD
    normalised = torch.stack([fashion.val[i][0] for i in range(500)])
    assert abs(normalised.mean().item()) < 0.1 and abs(normalised.std().item() - 1) < 0.1


def test_three_channels_and_resize() -> None:
    b = build_datasets({"name": "fashion_mnist", "channels": 3, "image_size": 32})
    x, _ = b.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert (b.channels, b.image_size, len(b.mean), len(b.std)) == (3, 32, 3, 3)
    v, _ = b.val[3]
    assert v.shape == (3, 32, 32)


def test_size_prefix_is_balanced() -> None:
    b = build_datasets({"name": "fashion_mnist", "train_size": 35, "val_size": 20})
    assert (len(b.train), len(b.val)) == (35, 20)
    counts = Counter(labels_of(b.train))
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1
    assert Counter(labels_of(b.val)) == {c: 2 for c in range(10)}


def shifts_of(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """All crops of the zero-padded image, i.e. every possible RandomCrop(padding=pad) result."""
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    h, w = img.shape[-2:]
    return [
        padded[..., dy : dy + h, dx : dx + w]
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
    ]


def augmented_matches(b: DatasetBundle, draws: int) -> tuple[int, int, int]:
    """(changed, plain shifts, only-flipped shifts) over ``draws`` augmented reads."""
    raw = load_fashion_mnist()["train_images"]
    changed = plain = flipped = 0
    for i in range(draws):
        x, _ = b.train[i]
        aug = to_uint8(x, FASHION_MNIST_MEAN[0], FASHION_MNIST_STD[0])
        orig = raw[i]
        changed += not torch.equal(aug, orig)
        if any(torch.equal(aug, s) for s in shifts_of(orig, 2)):
            plain += 1
        elif any(torch.equal(aug, s) for s in shifts_of(orig.flip(-1), 2)):
            flipped += 1
    return changed, plain, flipped


def test_augmentation_shifts_without_flip_by_default() -> None:
    torch.manual_seed(0)
    b = build_datasets({"name": "fashion_mnist", "train_size": 200})
    changed, plain, flipped = augmented_matches(b, 200)
    assert changed > 150  # 24 of 25 offsets move the image
    assert plain == 200 and flipped == 0


def test_hflip_on_request_and_augment_off() -> None:
    torch.manual_seed(0)
    b = build_datasets({"name": "fashion_mnist", "train_size": 200, "hflip": True})
    _, plain, flipped = augmented_matches(b, 200)
    assert plain + flipped == 200 and flipped > 50
    off = build_datasets({"name": "fashion_mnist", "train_size": 10, "augment": False})
    assert all(torch.equal(off.train[i][0], off.train[i][0]) for i in range(10))
    raw = load_fashion_mnist()["train_images"]
    assert torch.equal(
        to_uint8(off.train[4][0], FASHION_MNIST_MEAN[0], FASHION_MNIST_STD[0]), raw[4]
    )


def test_dataloader_batches(fashion: DatasetBundle) -> None:
    x, y = next(iter(DataLoader(fashion.train, batch_size=16, shuffle=True)))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert pickle.loads(pickle.dumps(fashion.train))[0][0].shape == (1, 28, 28)  # spawn workers


def test_balanced_order() -> None:
    assert balanced_order([0, 0, 0, 1, 2, 2]).tolist() == [0, 3, 4, 1, 5, 2]
    assert balanced_order([]).tolist() == []


# --------------------------------------------------------------------------- ImageFolder


def write_imagefolder(
    root: Path,
    val_name: str = "val",
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 3,
) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", val_name):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
                ext = "JPEG" if i % 2 else "png"
                Image.fromarray(pixels).save(folder / f"img{i}.{ext}")
    return root


@pytest.mark.parametrize("name", ["imagenet", "imagefolder"])
def test_imagefolder_loads(tmp_path: Path, name: str) -> None:
    root = write_imagefolder(tmp_path / "ds")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    b = build_datasets({"name": name, "root": str(root), "image_size": 32})
    assert (b.num_classes, b.channels, b.image_size) == (3, 3, 32)
    assert b.class_names == ["cat", "dog", "fox"]
    assert (len(b.train), len(b.val)) == (9, 9)
    for ds in (b.train, b.val):
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and type(x) is torch.Tensor
        assert y == 0
    x, y = next(iter(DataLoader(b.train, batch_size=4)))
    assert x.shape == (4, 3, 32, 32)
    assert pickle.loads(pickle.dumps(b.train))[1][0].shape == (3, 32, 32)


def test_spawned_workers_unpickle_datasets(tmp_path: Path) -> None:
    """``spawn`` (macOS, Windows, CUDA users) pickles the dataset into each worker, including
    the lazily defined ImageFolder subclass."""
    root = write_imagefolder(tmp_path / "ds")
    b = build_datasets({"name": "imagefolder", "root": str(root), "image_size": 16})
    loader = DataLoader(b.train, batch_size=9, num_workers=1, multiprocessing_context="spawn")
    x, y = next(iter(loader))
    assert x.shape == (9, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """PIL's convert("RGB") clips 16-bit grey at 255: a 16-bit PNG (medical, industrial
    cameras) arrived 99.6% white. It is now read as its 8-bit version is, in ImageFolder and in
    the detection readers' PIL path (16-bit TIFF)."""
    from prunecli.data.detection_files import decode_with_pil
    from prunecli.data.images import load_rgb

    eight = np.tile(np.arange(256, dtype=np.uint8), (40, 1))[:, :240]  # a grey ramp
    sixteen = eight.astype(np.uint16) * 257  # the same ramp in 16 bits
    for c in ("a", "b"):
        for split in ("train", "val"):
            (tmp_path / split / c).mkdir(parents=True)
        Image.fromarray(eight).save(tmp_path / "train" / c / "eight.png")
        Image.fromarray(sixteen).save(tmp_path / "val" / c / "sixteen.png")
    assert Image.open(tmp_path / "val" / "a" / "sixteen.png").mode.startswith("I")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "val" / "a" / "sixteen.png"))[..., 0],
                          eight)
    b = build_datasets({"name": "imagefolder", "root": str(tmp_path), "image_size": 32,
                        "augment": False})
    # both splits' eval pipelines see the same picture: the 16-bit one is not white
    (train_img, _), (val_img, _) = b.train[0], b.val[0]
    assert torch.allclose(train_img, val_img)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.tif")
    tif = decode_with_pil(str(tmp_path / "sixteen.tif"), exif=False)
    assert tif.dtype == torch.uint8 and torch.equal(tif[0], torch.from_numpy(eight))


def test_files_imagefolder_cannot_read_are_counted(tmp_path: Path, caplog) -> None:
    """A phone's .heic photos, or .gif, were left out without a word; hidden files
    (.DS_Store) still are."""
    import logging

    root = write_imagefolder(tmp_path / "ds")
    for name in ("a.heic", "b.HEIC", "c.gif", ".DS_Store"):
        (root / "train" / "cat" / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="prunecli"):
        b = build_datasets({"name": "imagefolder", "root": str(root), "image_size": 32})
    assert len(b.train) == 9  # the images only
    assert (f"{root / 'train'}: 3 files left out, in formats ImageFolder does not read (.heic 2, "
            ".gif 1); convert them to JPEG or PNG") in caplog.text
    assert f"{root / 'val'}:" not in caplog.text


def test_a_broken_image_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """A truncated JPEG in an ImageFolder raised PIL's OSError from a DataLoader worker, as a
    traceback, whenever the epoch reached it."""
    from prunecli.errors import DataError

    root = write_imagefolder(tmp_path / "ds")
    broken = root / "train" / "cat" / "img1.JPEG"
    broken.write_bytes(broken.read_bytes()[:200])  # cut off mid-scan
    b = build_datasets({"name": "imagefolder", "root": str(root), "image_size": 32})
    index = [Path(p).name for p, _ in b.train.samples].index("img1.JPEG")
    with pytest.raises(DataError) as exc:
        b.train[index]
    assert str(exc.value).startswith(f"cannot read {broken} as an image (")
    assert "\n" not in str(exc.value)


def test_imagefolder_options(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "ds", val_name="validation")
    b = build_datasets(
        {
            "name": "imagefolder",
            "root": str(root),
            "image_size": 24,
            "channels": 1,
            "train_size": 4,
            "hflip": False,
        }
    )
    assert b.train[0][0].shape == (1, 24, 24) and b.val[0][0].shape == (1, 24, 24)
    assert len(b.train) == 4 and sorted(labels_of(b.train)) == [0, 0, 1, 2]
    assert len(b.mean) == 1
    b = build_datasets({"name": "imagefolder", "root": str(root)})
    assert b.image_size == 224 and b.val[0][0].shape == (3, 224, 224)


def test_img_extensions_match_torchvision() -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from prunecli.data import imagefolder

    assert imagefolder.IMG_EXTENSIONS == IMG_EXTENSIONS


# --------------------------------------------------------------------------- CIFAR


def cifar_batch(n: int, key: str, seed: int, bytes_keys: bool) -> dict:
    rng = np.random.default_rng(seed)
    entry = {
        "batch_label": "batch",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        key: rng.integers(0, 10, n).tolist(),
        "filenames": [f"img{i}.png" for i in range(n)],
    }
    return {k.encode(): v for k, v in entry.items()} if bytes_keys else entry


def dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, bytes_keys: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", cifar_batch(2, "labels", i, bytes_keys))
    dump(folder / "test_batch", cifar_batch(3, "labels", 0, bytes_keys))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    meta = {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}
    if bytes_keys:
        meta = {b"label_names": [n.encode() for n in names]}
    dump(folder / "batches.meta", meta)
    return folder


def write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", 6, 1), ("test", 4, 2)):
        entry = cifar_batch(n, "fine_labels", seed, False)
        entry["coarse_labels"] = [0] * n
        dump(folder / name, entry)
    dump(
        folder / "meta",
        {
            "fine_label_names": [f"c{i}" for i in range(100)],
            "coarse_label_names": [f"s{i}" for i in range(20)],
        },
    )
    return folder


def test_cifar10_loads_from_parent_or_folder(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path / "data")
    for root in (folder.parent, folder):
        b = build_datasets({"name": "cifar10", "root": str(root)})
        assert (len(b.train), len(b.val), b.num_classes) == (10, 3, 10)
        assert (b.channels, b.image_size) == (3, 32)
        assert b.class_names[0] == "airplane"
        x, y = b.train[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    # pixel layout: the flat row is the R plane, then G, then B
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f)
    x, y = b.val[1]
    mean, std = torch.tensor(b.mean).view(3, 1, 1), torch.tensor(b.std).view(3, 1, 1)
    restored = (x * std + mean).mul(255).round().to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(batch["data"][1].reshape(3, 32, 32)))
    assert y == batch["labels"][1]


def test_cifar10_bytes_keys_and_options(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, bytes_keys=True)
    b = build_datasets(
        {"name": "cifar10", "root": str(folder), "channels": 1, "image_size": 40, "train_size": 4}
    )
    assert len(b.train) == 4 and b.train[0][0].shape == (1, 40, 40)
    assert b.class_names[1] == "automobile"


def test_cifar100_loads(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    b = build_datasets({"name": "cifar100", "root": str(tmp_path)})
    assert (len(b.train), len(b.val), b.num_classes) == (6, 4, 100)
    assert b.train[2][0].shape == (3, 32, 32)
    x, _ = next(iter(DataLoader(b.train, batch_size=6)))
    assert x.shape == (6, 3, 32, 32)


# --------------------------------------------------------------------------- fake


def test_fake_is_deterministic() -> None:
    a = build_datasets({"name": "fake"})
    b = build_datasets({"name": "fake"})
    assert (len(a.train), len(a.val), a.num_classes) == (256, 64, 10)
    assert (a.channels, a.image_size) == (3, 32)
    torch.manual_seed(123)
    assert torch.equal(a.train[5][0], b.train[5][0]) and a.train[5][1] == b.train[5][1]
    assert not torch.equal(a.train[5][0], a.val[5][0])
    c = build_datasets(
        {
            "name": "fake",
            "train_size": 12,
            "val_size": 4,
            "num_classes": 3,
            "image_size": 16,
            "channels": 1,
        }
    )
    assert (len(c.train), len(c.val), c.num_classes) == (12, 4, 3)
    assert c.train[0][0].shape == (1, 16, 16) and c.train[0][0].dtype == torch.float32
    assert set(labels_of(c.train)) == {0, 1, 2}


# --------------------------------------------------------------------------- errors


def raises_data_error(cfg: object, *needles: str) -> str:
    with pytest.raises(DataError) as info:
        build_datasets(cfg)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("name", ["imagenet", "imagefolder", "cifar10", "cifar100"])
def test_root_not_set(name: str) -> None:
    raises_data_error({"name": name}, f"data={name} needs data.root=PATH")


def test_root_missing_in_omegaconf_reads_as_not_set() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "cifar10", "root": "???", "batch_size": 64})
    raises_data_error(cfg, "data=cifar10 needs data.root=PATH")
    assert len(build_datasets(OmegaConf.structured(DataConfig(name="fake"))).train) == 256


def test_root_not_set_message_for_imagenet() -> None:
    assert raises_data_error({"name": "imagenet"}) == (
        "data=imagenet needs data.root=PATH pointing at a folder with train/ and val/ "
        "ImageFolder subfolders"
    )


@pytest.mark.parametrize("name", ["imagenet", "imagefolder", "cifar10", "cifar100"])
def test_root_missing(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    raises_data_error({"name": name, "root": str(missing)}, str(missing), "does not exist")


def test_split_folder_missing(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "ds")
    for c in ("cat", "dog", "fox"):
        for f in (root / "val" / c).iterdir():
            f.unlink()
        (root / "val" / c).rmdir()
    (root / "val").rmdir()
    raises_data_error({"name": "imagenet", "root": str(root)}, str(root), "val/")
    raises_data_error(
        {"name": "imagefolder", "root": str(root)}, str(root), "val/", "validation/", "test/"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    raises_data_error({"name": "imagefolder", "root": str(empty)}, str(empty), "train/")


def test_split_without_classes_or_images(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    (root / "val" / "cat").mkdir(parents=True)
    raises_data_error(
        {"name": "imagenet", "root": str(root)},
        str(root / "train"),
        "no class folders",
        "train/<class>/<image>.jpg",
    )
    (root / "train" / "cat").mkdir()
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    raises_data_error(
        {"name": "imagenet", "root": str(root)},
        str(root / "train"),
        "no images",
        "train/<class>/<image>.jpg",
    )
    root2 = write_imagefolder(tmp_path / "ds2")
    (root2 / "train" / "eel").mkdir()
    (root2 / "val" / "eel").mkdir()
    raises_data_error({"name": "imagefolder", "root": str(root2)}, str(root2 / "train"), "eel")


def test_class_lists_differ(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "ds")
    (root / "val" / "fox").rename(root / "val" / "wolf")
    raises_data_error(
        {"name": "imagefolder", "root": str(root)},
        str(root / "train"),
        str(root / "val"),
        "fox",
        "wolf",
    )


def test_a_validation_split_without_a_rare_class_is_labelled_by_trains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rare class with no validation images: the remaining classes keep train's labels
    (ImageFolder on the val folder alone would number them 0, 1 and mislabel fox as dog)."""
    root = write_imagefolder(tmp_path / "ds")
    for f in (root / "val" / "dog").iterdir():
        f.unlink()
    (root / "val" / "dog").rmdir()
    with caplog.at_level("WARNING", logger="prunecli"):
        b = build_datasets({"name": "imagefolder", "root": str(root), "image_size": 16})
    assert b.num_classes == 3 and b.class_names == ["cat", "dog", "fox"]
    assert sorted(labels_of(b.val)) == [0, 0, 0, 2, 2, 2]
    assert "has no folder for 1 of the 3 training classes (dog)" in caplog.text
    assert pickle.loads(pickle.dumps(b.val))[5][1] == 2


def test_cifar_files_missing(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "batches.meta").unlink()
    for root in (tmp_path, folder):
        raises_data_error(
            {"name": "cifar10", "root": str(root)}, str(folder), "data_batch_3", "batches.meta"
        )
    raises_data_error(
        {"name": "cifar100", "root": str(tmp_path)},
        str(tmp_path),
        "train",
        "meta",
        "cifar-100-python",
    )


def test_cifar_corrupt_file(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    raises_data_error({"name": "cifar10", "root": str(tmp_path)}, str(folder))


def test_unknown_dataset_and_bad_config() -> None:
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        build_datasets({"name": "fashion_mnst"})
    with pytest.raises(ConfigError, match="bogus"):
        build_datasets({"name": "fake", "bogus": 1})
    with pytest.raises(ConfigError, match="channels"):
        build_datasets({"name": "fake", "channels": 2})
    with pytest.raises(ConfigError, match="train_size"):
        build_datasets({"name": "fake", "train_size": 0})

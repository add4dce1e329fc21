"""Detection datasets (VOC, COCO) on tiny files in their real layouts, through the registry.

The fixtures (tests/det_fixtures.py) fix the first image of every split, so box mapping is
checked against numbers worked out by hand rather than against the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from prunecli.data import build_datasets
from prunecli.data.detection import collate_detection, detection_base
from prunecli.data.detection_transforms import SafeRandomIoUCrop
from prunecli.data.voc import VOC_CLASSES
from prunecli.errors import ConfigError, DataError
from tests.det_fixtures import make_coco, make_voc, make_yolo


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"), years=("2007", "2012"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


def voc(root: Path, **kw):
    return build_datasets({"name": "voc", "root": str(root), **kw})


def coco(root: Path, **kw):
    return build_datasets({"name": "coco", "root": str(root), **kw})


def check_sample(sample, size: int, index: int, num_classes: int) -> None:
    """The contract of prunecli.data.detection, for one sample."""
    image, target = sample
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert image.shape == (3, size, size) and image.min() >= 0 and image.max() <= 1
    assert set(target) == {"boxes", "labels", "image_id", "orig_size"}
    boxes, labels = target["boxes"], target["labels"]
    assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32 and boxes.shape[1:] == (4,)
    assert labels.dtype == torch.int64 and labels.shape == (len(boxes),)
    assert ((labels >= 1) & (labels <= num_classes)).all()
    assert (boxes >= 0).all() and (boxes <= size).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert target["image_id"] == index and isinstance(target["image_id"], int)
    assert target["orig_size"].dtype == torch.int64 and target["orig_size"].shape == (2,)


def one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# --------------------------------------------------------------------------------------- VOC


def test_voc_bundle_and_sample_contract(voc_root: Path) -> None:
    b = voc(voc_root)
    assert (b.task, b.channels, b.image_size, b.num_classes) == ("detection", 3, 300, 20)
    assert b.class_names == list(VOC_CLASSES) and b.mean == (0.0,) * 3 and b.std == (1.0,) * 3
    assert (len(b.train), len(b.val)) == (12, 4)  # 2007 + 2012 trainval; 2007 test
    for ds in (b.train, b.val):
        for i in range(len(ds)):
            check_sample(ds[i], 300, i, 20)
            gt = ds.ground_truth(i)
            assert gt.image_id == i
            assert ds[i][1]["orig_size"].tolist() == [gt.height, gt.width]


def test_voc_eval_boxes_and_ground_truth_exact(voc_root: Path) -> None:
    val = voc(voc_root, image_size=100).val
    # test image 0: 64x48, cat (5, 7, 30, 25) and difficult dog (20, 10, 60, 40), 1-based incl.
    gt = val.ground_truth(0)
    assert (gt.width, gt.height, gt.source_id, gt.areas) == (64, 48, None, None)
    np.testing.assert_array_equal(gt.boxes, [[4, 6, 30, 25], [19, 9, 60, 40]])
    np.testing.assert_array_equal(gt.labels, [8, 12])  # cat, dog in VOC's order
    np.testing.assert_array_equal(gt.ignore, [False, True])
    w, h = gt.boxes[0, 2] - gt.boxes[0, 0], gt.boxes[0, 3] - gt.boxes[0, 1]
    assert w * h == (30 - 5 + 1) * (25 - 7 + 1)  # the devkit's (w + 1)(h + 1)
    _, target = val[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[6.25, 12.5, 46.875, 52.083333]]))
    assert target["labels"].tolist() == [8] and target["orig_size"].tolist() == [48, 64]


def test_difficult_objects_flagged_and_left_out_of_targets(voc_root: Path) -> None:
    b = voc(voc_root, augment=False, image_size=64)
    flagged = 0
    for ds in (b.train, b.val):
        for i in range(len(ds)):
            gt = ds.ground_truth(i)
            flagged += int(gt.ignore.sum())
            assert ds[i][1]["labels"].tolist() == gt.labels[~gt.ignore].tolist()
    assert flagged >= 3


def test_voc_class_names_given_standard_and_inferred(tmp_path: Path, voc_root: Path) -> None:
    b = voc(voc_root, class_names=["person", "dog", "cat"], image_size=64)
    assert b.class_names == ["person", "dog", "cat"] and b.num_classes == 3
    assert b.val.ground_truth(0).labels.tolist() == [3, 2]
    with pytest.raises(DataError) as exc:
        voc(voc_root, class_names=["person", "dog"])
    one_line_error(exc, "'cat'", ".xml")
    own = make_voc(tmp_path, classes=("zebra", "apple"), n_trainval=3, n_test=2)
    assert voc(own, train_split="2007/trainval").class_names == ["apple", "zebra"]


def test_voc_augmentation_keeps_boxes_valid(voc_root: Path) -> None:
    train = voc(voc_root, image_size=64, hflip=True).train
    torch.manual_seed(0)
    _, plain = voc(voc_root, image_size=64, augment=False).train[0]
    changed = 0
    for k in range(200):
        i = k % len(train)
        check_sample(train[i], 64, i, 20)
        if i == 0:
            changed += int(train[0][1]["boxes"].shape != plain["boxes"].shape
                           or not torch.equal(train[0][1]["boxes"], plain["boxes"]))
    assert changed > 0  # augmentation does something


def test_iou_crop_leaves_images_without_boxes_alone() -> None:
    image = tv_tensors.Image(torch.zeros(3, 40, 50, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY",
                                                canvas_size=(40, 50)),
              "labels": torch.zeros(0, dtype=torch.int64)}
    for _ in range(5):
        rng = torch.get_rng_state()
        out, out_target = SafeRandomIoUCrop()(image, target)
        assert out.shape == image.shape and out_target["boxes"].shape == (0, 4)
        assert torch.equal(torch.get_rng_state(), rng)  # decided at once, nothing drawn


def _crops(crop: v2.RandomIoUCrop, boxes: tv_tensors.BoundingBoxes, draws: int) -> np.ndarray:
    """``draws`` crop parameters as rows ``cropped, top, left, height, width``."""
    image = tv_tensors.Image(torch.zeros(3, *boxes.canvas_size, dtype=torch.uint8))
    rows = []
    for _ in range(draws):
        p = crop.make_params([image, boxes])
        rows.append((0, 0, 0, *boxes.canvas_size) if not p else
                    (1, p["top"], p["left"], p["height"], p["width"]))
    return np.asarray(rows, dtype=np.float64)


def test_iou_crop_samples_as_torchvision_does() -> None:
    # one mid-size and one small box, as in VOC: torchvision's sampler fails many trials here
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10, 60, 80], [100, 10, 120, 40]]),
                                     format="XYXY", canvas_size=(117, 142))
    torch.manual_seed(0)
    ours = _crops(SafeRandomIoUCrop(), boxes, 1500)
    torch.manual_seed(1)
    theirs = _crops(v2.RandomIoUCrop(), boxes, 1500)
    # the share of images cropped (the rest drew "leave as is") and the mean crop geometry;
    # 1,500 draws: standard errors ~0.012 for the share and ~1 px for the means
    assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 0.05
    mean = lambda a: a[a[:, 0] == 1, 1:].mean(axis=0)  # noqa: E731
    np.testing.assert_allclose(mean(ours), mean(theirs), atol=4.0)


def test_iou_crop_keeps_torchvision_constraints() -> None:
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10, 60, 80], [100, 10, 120, 40]]),
                                     format="XYXY", canvas_size=(117, 142))
    crop = SafeRandomIoUCrop(sampler_options=[0.5])  # never "leave as is"
    image = tv_tensors.Image(torch.zeros(3, 117, 142, dtype=torch.uint8))
    torch.manual_seed(0)
    for _ in range(200):
        p = crop.make_params([image, boxes])
        top, left, h, w = p["top"], p["left"], p["height"], p["width"]
        assert 0.5 <= w / h <= 2.0 and 0.3 * 142 - 1 <= w <= 142 and 0.3 * 117 - 1 <= h <= 117
        assert 0 <= left <= 142 - w and 0 <= top <= 117 - h
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (left < cx) & (cx < left + w) & (top < cy) & (cy < top + h)
        assert torch.equal(p["is_within_crop_area"], inside) and inside.any()
        window = torch.tensor([[left, top, left + w, top + h]], dtype=torch.float32)
        assert box_iou(boxes[inside].as_subclass(torch.Tensor), window).max() >= 0.5


def test_collate_in_a_dataloader(voc_root: Path) -> None:
    b = voc(voc_root, image_size=64, train_size=5)
    images, targets = next(iter(DataLoader(b.train, batch_size=4, collate_fn=collate_detection)))
    assert images.shape == (4, 3, 64, 64) and len(targets) == 4
    assert [t["image_id"] for t in targets] == [0, 1, 2, 3]
    base, indices = detection_base(b.train)
    assert base is b.train and indices == list(range(5))


def test_voc_sizes_single_folder_and_devkit_parent(tmp_path: Path, voc_root: Path) -> None:
    full, small = voc(voc_root, image_size=64), voc(voc_root, train_size=3, val_size=2)
    assert (len(small.train), len(small.val)) == (3, 2)
    np.testing.assert_array_equal(small.train.ground_truth(2).boxes,
                                  full.train.ground_truth(2).boxes)
    assert len(voc(voc_root.parent, val_split="2012/test").val) == 4  # root holding VOCdevkit/
    folder = make_voc(tmp_path, single_folder=True, n_trainval=5, n_test=3)
    b = voc(folder, image_size=64)
    assert (len(b.train), len(b.val)) == (5, 3)
    assert len(voc(folder, train_split="trainval+test").train) == 8
    with pytest.raises(ConfigError):
        voc(folder, train_split="2007/trainval")
    (folder / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(DataError) as exc:
        voc(folder)
    one_line_error(exc, str(folder / "ImageSets" / "Main" / "test.txt"), "data.val_split")


def test_voc_split_folders_read_as_the_same_data_in_voc_layout(tmp_path: Path) -> None:
    """Roboflow's Pascal VOC export (and labelImg's output): one folder per split, each image's
    XML beside it, no ImageSets. The same files in that layout give the same dataset."""
    import shutil

    folder = make_voc(tmp_path / "voc", single_folder=True, n_trainval=5, n_test=3)
    flat = tmp_path / "export"
    for set_name, split in (("trainval", "train"), ("test", "valid")):
        (flat / split).mkdir(parents=True)
        for image_id in (folder / "ImageSets" / "Main" / f"{set_name}.txt").read_text().split():
            shutil.copy(folder / "Annotations" / f"{image_id}.xml", flat / split)
            shutil.copy(folder / "JPEGImages" / f"{image_id}.jpg", flat / split)
    a, b = voc(folder, image_size=64), voc(flat, image_size=64)
    assert b.class_names == a.class_names and (len(b.train), len(b.val)) == (5, 3)
    for split in ("train", "val"):
        for i in range(len(getattr(a, split))):
            ga, gb = getattr(a, split).ground_truth(i), getattr(b, split).ground_truth(i)
            np.testing.assert_array_equal(gb.boxes, ga.boxes)
            assert gb.labels.tolist() == ga.labels.tolist()
            assert gb.ignore.tolist() == ga.ignore.tolist()
    torch.testing.assert_close(b.val[0][0], a.val[0][0])  # the same pixels (train augments)
    (flat / "valid").rename(flat / "test")  # the next default validation folder
    assert len(voc(flat).val) == 3
    with pytest.raises(DataError) as exc:
        voc(flat, val_split="valid")
    one_line_error(exc, "data.val_split=valid", "has split folders test, train")
    (flat / "train" / "000001.jpg").unlink()
    with pytest.raises(DataError) as exc:
        voc(flat)
    one_line_error(exc, str(flat / "train" / "000001.xml"), "no image beside it")


def test_voc_layout_errors_name_the_path(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_trainval=4, n_test=2)  # 2007 only
    with pytest.raises(DataError) as exc:
        voc(root)  # default train split needs VOC2012
    one_line_error(exc, str(root / "VOC2012"), "data.train_split")
    split = {"train_split": "2007/trainval"}
    year = root / "VOC2007"
    (year / "Annotations" / "000002.xml").unlink()
    with pytest.raises(DataError) as exc:
        voc(root, **split)
    one_line_error(exc, str(year / "Annotations" / "000002.xml"), "ImageSets/Main/trainval.txt")
    (year / "Annotations" / "000002.xml").write_text("<annotation><size><width>3</width>")
    with pytest.raises(DataError) as exc:
        voc(root, **split)
    one_line_error(exc, str(year / "Annotations" / "000002.xml"), "not valid XML")
    (year / "Annotations" / "000002.xml").write_text("<annotation><object><name>cat</name>"
                                                     "</object></annotation>")
    with pytest.raises(DataError) as exc:
        voc(root, **split)
    one_line_error(exc, "000002.xml", "<bndbox>")
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000003\n")
    (year / "JPEGImages" / "000003.jpg").unlink()
    with pytest.raises(DataError) as exc:
        voc(root, **split)
    one_line_error(exc, str(year / "JPEGImages" / "000003.jpg"), "JPEGImages/<id>.jpg")
    with pytest.raises(DataError) as exc:
        voc(root, train_split="2007/train")  # a list the folder lacks: the ones it has are named
    one_line_error(exc, "ImageSets/Main/train.txt", "lists there: test, trainval")
    with pytest.raises(ConfigError):
        voc(root, channels=1)
    with pytest.raises(DataError) as exc:
        voc(tmp_path / "nothing_here")
    one_line_error(exc, "nothing_here")


# -------------------------------------------------------------------------------------- COCO


def test_coco_categories_source_ids_and_crowd(coco_root: Path) -> None:
    b = coco(coco_root, image_size=64)
    assert (b.task, b.num_classes, b.class_names) == ("detection", 3, ["cat", "dog", "person"])
    val, train = b.val, b.train
    assert len(val) == 6 and len(train) == 4  # no object (1), only a crowd region (2): dropped
    assert [val.ground_truth(i).source_id for i in range(6)] == [100 + 7 * i for i in range(6)]
    assert [train.ground_truth(i).source_id for i in range(4)] == [100, 121, 128, 135]
    gt = val.ground_truth(0)
    np.testing.assert_allclose(gt.boxes, [[5, 7, 30, 25], [10.5, 12, 40.5, 32]])
    assert gt.labels.tolist() == [1, 3]  # category ids 1 and 7
    np.testing.assert_allclose(gt.areas, [0.8 * 25 * 18, 0.8 * 30 * 20])
    assert (gt.width, gt.height) == (64, 48)
    assert len(val.ground_truth(1).boxes) == 0 and val[1][1]["boxes"].shape == (0, 4)
    assert val.ground_truth(2).ignore.tolist() == [True] and len(val[2][1]["boxes"]) == 0
    crowd3 = val.ground_truth(3)
    assert crowd3.ignore[0] and not crowd3.ignore[1:].any()
    assert (np.diff(crowd3.boxes[:, 0::2]) > 0).all()  # the zero-width box is gone
    assert len(val[3][1]["boxes"]) == len(crowd3.boxes) - 1
    for ds in (train, val):
        for i in range(len(ds)):
            check_sample(ds[i], 64, i, 3)
    _, target = val[0]
    torch.testing.assert_close(target["boxes"][1], torch.tensor([10.5, 16, 40.5, 42.666667]))


def test_coco_class_names_restrict_and_reorder(coco_root: Path, tmp_path: Path) -> None:
    b = coco(coco_root, class_names=["person", "cat"], image_size=64)
    assert b.num_classes == 2 and b.val.ground_truth(0).labels.tolist() == [2, 1]
    assert all(set(b.val.ground_truth(i).labels) <= {1, 2} for i in range(len(b.val)))
    with pytest.raises(DataError) as exc:
        coco(coco_root, class_names=["horse"])
    one_line_error(exc, "'horse'", "instances_train2017.json")
    robo = make_coco(tmp_path / "robo", splits=("train", "valid"), n_images=4, roboflow=True)
    assert len(coco(robo, train_split="train", val_split="valid").val) == 4
    assert len(coco(robo).val) == 4  # a Roboflow export's split names are found by default
    with pytest.raises(DataError) as exc:
        coco(robo, val_split="test")
    one_line_error(exc, "data.val_split=test", "splits found there: train, valid")


def test_coco_images_in_cvats_layout(tmp_path: Path) -> None:
    """CVAT exports annotations/instances_default.json with every image in images/."""
    root = make_coco(tmp_path, splits=("train2017",), n_images=4)
    (root / "annotations" / "instances_train2017.json").rename(
        root / "annotations" / "instances_default.json")
    (root / "train2017").rename(root / "images")
    b = coco(root, train_split="default", val_split="default", image_size=64)
    assert len(b.val) == 4 and b.val.ground_truth(0).source_id == 100
    assert str(root / "images") in b.val.annotations.paths[0]
    (root / "images" / "000000000100.jpg").rename(root / "elsewhere.jpg")
    with pytest.raises(DataError) as exc:
        coco(root, train_split="default", val_split="default")
    one_line_error(exc, "no image folder for data.train_split=default", "000000000100.jpg",
                   "default/, images/default/, images/")
    # Label Studio: result.json at the root, file names "images/<name>"
    (root / "elsewhere.jpg").rename(root / "images" / "000000000100.jpg")
    data = json.loads((root / "annotations" / "instances_default.json").read_text())
    for image in data["images"]:
        image["file_name"] = f"images/{image['file_name']}"
    (root / "result.json").write_text(json.dumps(data))
    b = coco(root, train_split="result.json", val_split="result.json", image_size=64)
    assert len(b.val) == 4 and b.val.annotations.paths[0] == str(root / "images" /
                                                                  "000000000100.jpg")
    with pytest.raises(DataError) as exc:
        coco(root, train_split="results.json")
    one_line_error(exc, "data.train_split=results.json", "is not a file")


def test_a_photo_stored_sideways_is_turned_by_its_exif_tag(tmp_path: Path) -> None:
    """Phone photos are stored sideways with an EXIF orientation tag, and annotation tools
    (CVAT, Roboflow) label them as displayed: the image must be turned to match its boxes."""
    from PIL import Image

    root = make_coco(tmp_path, n_images=4)
    ann = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    info = data["images"][0]
    w, h = info["width"], info["height"]
    assert w != h
    upright = np.zeros((h, w, 3), np.uint8)
    upright[:, : w // 2] = (250, 0, 0)  # left half red, right half blue, as displayed
    upright[:, w // 2:] = (0, 0, 250)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # w and h swapped
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored.save(root / "val2017" / info["file_name"], exif=exif, quality=95)
    image = coco(root).val.read_image(0)
    assert tuple(image.shape) == (3, h, w)
    left, right = image[:, :, : w // 2 - 2].float(), image[:, :, w // 2 + 2:].float()
    assert left[0].mean() > 200 and right[2].mean() > 200  # red left, blue right: upright
    stored.save(root / "val2017" / info["file_name"])
    with pytest.raises(DataError) as exc:  # sideways without a tag: the sizes disagree,
        coco(root)  # found when the dataset is built, not when a worker reads the image
    one_line_error(exc, info["file_name"], f"is {h}x{w} pixels", f"says {w}x{h}")


def test_coco_errors_name_the_file(tmp_path: Path) -> None:
    root = make_coco(tmp_path, n_images=4)
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DataError) as exc:
        coco(root)
    one_line_error(exc, "annotations/instances_val2017.json", "val2017/_annotations.coco.json")
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [')
    with pytest.raises(DataError) as exc:
        coco(root)
    one_line_error(exc, str(root / "annotations" / "instances_val2017.json"), "not valid JSON")
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    (root / "train2017" / "000000000100.jpg").unlink()
    with pytest.raises(DataError) as exc:
        coco(root)
    one_line_error(exc, str(root / "train2017" / "000000000100.jpg"))


# -------------------------------------------------------------------------------------- YOLO


@pytest.mark.parametrize("roboflow", [False, True])
def test_yolo_labels_become_the_boxes_they_describe(tmp_path: Path, roboflow: bool) -> None:
    root, expected = make_yolo(tmp_path / "yolo", roboflow=roboflow)
    b = build_datasets({"name": "yolo", "root": str(root), "image_size": 64})
    assert (b.task, b.class_names) == ("detection", ["cat", "dog", "person"])
    assert len(b.val) == 5 and len(b.train) == 4  # training leaves out the unlabelled image
    names = b.class_names
    for ds, objects in ((b.val, expected["val"]), (b.train, expected["train"][:1] +
                                                   expected["train"][2:])):
        for i, want in enumerate(objects):
            gt = ds.ground_truth(i)
            np.testing.assert_allclose(gt.boxes, np.array([o[1] for o in want]).reshape(-1, 4),
                                       atol=1e-9)
            assert [names[k - 1] for k in gt.labels] == [o[0] for o in want]
            check_sample(ds[i], 64, i, 3)
    assert len(b.val.ground_truth(1).boxes) == 0  # no label file: an image without objects


def test_yolo_layouts_and_errors(tmp_path: Path) -> None:
    root, _ = make_yolo(tmp_path / "yolo")
    (root / "data.yaml").unlink()  # folders alone: the names must be given
    with pytest.raises(DataError) as exc:
        build_datasets({"name": "yolo", "root": str(root)})
    one_line_error(exc, "data.class_names")
    b = build_datasets({"name": "yolo", "root": str(root), "class_names": ["a", "b", "c"]})
    assert b.class_names == ["a", "b", "c"] and len(b.val) == 5
    (root / "data.yaml").write_text("path: ../datasets/coco128\ntrain: images/train\n"
                                    "val: images/val\nnames: [a, b, c]\n")  # coco128.yaml's form
    assert len(build_datasets({"name": "yolo", "root": str(root)}).val) == 5
    lst = root / "val_list.txt"  # a split given as a list file, relative paths
    lst.write_text("images/val/val_000.jpg\nimages/val/val_002.jpg\n")
    (root / "data.yaml").write_text("train: images/train\nval: val_list.txt\nnames: [a, b, c]\n")
    assert len(build_datasets({"name": "yolo", "root": str(root)}).val) == 2
    with pytest.raises(DataError) as exc:
        build_datasets({"name": "yolo", "root": str(root), "val_split": "test"})
    one_line_error(exc, "data.val_split", "'test'", "train, val")
    with pytest.raises(ConfigError) as exc:
        build_datasets({"name": "yolo", "root": str(root), "class_names": ["a", "b"]})
    one_line_error(exc, "2 names", "3")
    (root / "labels" / "val" / "val_000.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError) as exc:
        build_datasets({"name": "yolo", "root": str(root)})
    one_line_error(exc, "val_000.txt, line 1", "class 7 is not in 0..2")
    (root / "labels" / "val" / "val_000.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(DataError) as exc:
        build_datasets({"name": "yolo", "root": str(root)})
    one_line_error(exc, "val_000.txt, line 1", "3 numbers after the class")
    for text, needle in (("nc: 4\ntrain: images/train\nval: images/val\nnames: [a, b, c]\n",
                          "nc is 4 but names has 3 entries"),
                         ("train: images/train\nval: images/val\nnames: [a, b, a]\n",
                          "names repeats a; each class index needs a name of its own")):
        saved = (root / "data.yaml").read_text()
        (root / "data.yaml").write_text(text)
        with pytest.raises(DataError) as exc:
            build_datasets({"name": "yolo", "root": str(root)})
        one_line_error(exc, "data.yaml", needle)
        (root / "data.yaml").write_text(saved)
    # pixel coordinates where fractions belong (a common exporter mistake) would have become
    # boxes hundreds of images wide; Ultralytics refuses them too
    (root / "labels" / "val" / "val_000.txt").write_text("0 120 80 30.5 22\n")
    with pytest.raises(DataError) as exc:
        build_datasets({"name": "yolo", "root": str(root)})
    one_line_error(exc, "val_000.txt, line 1", "outside [0, 1]", "pixel coordinates")
    (root / "labels" / "val" / "val_000.txt").write_text("0 0.995 0.5 0.02 0.1\n")  # rounding
    assert len(build_datasets({"name": "yolo", "root": str(root)}).val) == 2  # the list's two


def test_yolo_files_in_other_formats_are_counted(tmp_path: Path, caplog) -> None:
    """A phone's .heic photos in an images folder were left out without a word."""
    import logging

    root, _ = make_yolo(tmp_path / "yolo")
    for name in ("a.heic", "b.heic", "c.gif", ".DS_Store", "labels.cache"):
        (root / "images" / "train" / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="prunecli"):
        b = build_datasets({"name": "yolo", "root": str(root), "background_images": True})
    assert len(b.train) == 5
    assert (f"{root / 'images' / 'train'}: 3 files left out, in formats data=yolo does not read "
            "(.heic 2, .gif 1)") in caplog.text


def test_yolo_boxes_are_placed_in_the_image_as_displayed(tmp_path: Path) -> None:
    """Ultralytics reads a photo with its EXIF orientation applied and labels it so: a photo
    stored sideways gets its boxes on the turned image, whose size is the displayed one."""
    from PIL import Image

    root, expected = make_yolo(tmp_path / "yolo")
    image = root / "images" / "val" / "val_000.jpg"
    upright = np.asarray(Image.open(image))
    h, w = upright.shape[:2]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(image, exif=exif,
                                                                        quality=95)
    b = build_datasets({"name": "yolo", "root": str(root)})
    gt = b.val.ground_truth(0)
    assert (gt.width, gt.height) == (w, h)
    np.testing.assert_allclose(gt.boxes, np.array([o[1] for o in expected["val"][0]]),
                               atol=1e-9)
    turned = b.val.read_image(0).permute(1, 2, 0).numpy().astype(float)
    assert np.abs(turned - upright).mean() < 8  # the upright pixels, up to JPEG noise


def test_images_of_every_common_mode_decode_to_8_bit_rgb(tmp_path: Path) -> None:
    """Grayscale, palette, grey+alpha, RGBA, CMYK JPEG and 16-bit PNG files all become uint8
    3 x H x W (a 16-bit PNG decoded as uint16 broke the uint8 transforms)."""
    from PIL import Image

    from prunecli.data.detection_files import decode_rgb

    ramp = (np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.new("L", (64, 48), 77).save(tmp_path / "l.jpg", quality=100)
    Image.new("P", (64, 48), 0).save(tmp_path / "p.png")
    Image.new("LA", (64, 48), (200, 255)).save(tmp_path / "la.png")
    Image.new("RGBA", (64, 48), (10, 20, 30, 255)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (64, 48), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    for name, value in (("g16.png", None), ("l.jpg", 77), ("p.png", 0), ("la.png", 200),
                        ("rgba.png", None), ("cmyk.jpg", 255)):
        image = decode_rgb(str(tmp_path / name))
        assert image.dtype == torch.uint8 and image.shape == (3, 48, 64), name
        if value is not None:
            assert abs(image.float().mean().item() - value) <= 1, name
    assert decode_rgb(str(tmp_path / "rgba.png"))[:, 0, 0].tolist() == [10, 20, 30]
    for ext in ("bmp", "tif", "webp"):  # BMP and TIFF: torchvision cannot, PIL decodes them
        Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / f"x.{ext}", lossless=True)
        assert decode_rgb(str(tmp_path / f"x.{ext}"))[:, 5, 5].tolist() == [10, 20, 30], ext
    g16 = decode_rgb(str(tmp_path / "g16.png"))[0].numpy().astype(int)
    assert np.abs(g16 - (ramp.astype(int) * 255 // 65535)).max() <= 1  # scaled, not clipped


def test_a_split_is_described_by_its_objects_per_class(coco_root: Path) -> None:
    from prunecli.data.detection_files import describe_objects

    val = coco(coco_root).val
    labels = np.concatenate([val.ground_truth(i).labels[~val.ground_truth(i).ignore]
                             for i in range(len(val))])
    counts = {n: int((labels == k + 1).sum()) for k, n in enumerate(val.class_names)}
    crowd = sum(int(val.ground_truth(i).ignore.sum()) for i in range(len(val)))
    text = describe_objects(val.annotations, val.class_names)
    # image 1 has no object, image 2 only a crowd region
    assert text.startswith(f"6 images (2 without objects), {len(labels)} objects (")
    assert f"{crowd} ignored" in text
    for name, n in counts.items():
        assert f"{name} {n}" in text
    assert describe_objects(val.annotations, val.class_names, most=1).count(",") == 3


def test_background_images_are_left_out_of_training_unless_asked(tmp_path: Path, caplog) -> None:
    """Images without objects (Ultralytics' recommended 0-10% background images) were dropped
    from training without a word; now the count is said, and data.background_images=true trains
    on them (every detector's loss takes an image without boxes: SSD's is 0 there, RetinaNet's,
    FCOS's and Faster R-CNN's are not)."""
    import logging

    from prunecli.data.detection_files import describe_objects

    yolo, _ = make_yolo(tmp_path / "yolo", n_images=5)  # image 1 of each split has no labels
    coco = make_coco(tmp_path / "coco", n_images=6)  # image 1: no object, image 2: crowd only
    for cfg, objects, left_out in (({"name": "yolo", "root": str(yolo)}, 4, 1),
                                   ({"name": "coco", "root": str(coco)}, 4, 2)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="prunecli"):
            default = build_datasets(cfg)
        assert len(default.train) == objects
        assert (f"data={cfg['name']}: {left_out} training image{'s' if left_out > 1 else ''} "
                "without objects left out (data.background_images=true trains on them as "
                "background)") in caplog.text
        everything = build_datasets({**cfg, "background_images": True})
        assert len(everything.train) == objects + left_out
        assert len(everything.val) == len(default.val)  # validation keeps every image anyway
        empty = [i for i in range(len(everything.train))
                 if not (everything.train[i][1]["labels"] > 0).any()]
        assert len(empty) == left_out  # they arrive as images without training boxes
        assert describe_objects(everything.train.annotations, everything.class_names
                                ).startswith(f"{objects + left_out} images ({left_out} without "
                                             "objects), ")


def test_boxes_past_their_image_are_warned(tmp_path: Path, caplog) -> None:
    """Corners written where COCO's [x, y, width, height] belongs give boxes that reach past
    the image: it trained without a word. Now the split's log says how many, with an example."""
    import json
    import logging

    root = make_coco(tmp_path / "coco", n_images=6)
    with caplog.at_level(logging.WARNING, logger="prunecli"):
        build_datasets({"name": "coco", "root": str(root)})
    assert "reach past their image" not in caplog.text  # the fixture's boxes are inside
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    images = {i["id"]: i for i in data["images"]}
    for a in data["annotations"]:  # as a converter that wrote x1, y1, x2, y2 would
        x, y, w, h = a["bbox"]
        a["bbox"] = [x, y, x + w, y + h]
    path.write_text(json.dumps(data))
    past = sum(1 for a in data["annotations"] if a["bbox"][2] > 0 and a["bbox"][3] > 0
               and (
                   a["bbox"][0] + a["bbox"][2] > 1.02 * images[a["image_id"]]["width"] + 1
                   or a["bbox"][1] + a["bbox"][3] > 1.02 * images[a["image_id"]]["height"] + 1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prunecli"):
        build_datasets({"name": "coco", "root": str(root)})
    assert past and f"data=coco, val split: {past} of " in caplog.text
    assert "boxes reach past their image" in caplog.text and "COCO's bbox is [x, y," in caplog.text


def test_objects_too_small_at_the_input_are_warned(tmp_path: Path, caplog) -> None:
    """A detector trained at an input where most objects shrink under 8 px finds few of them;
    the run says so, with the share."""
    import logging

    from prunecli.data.detection_files import object_sizes

    root = make_coco(tmp_path / "coco", n_images=6)
    for size, warned in ((300, False), (16, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="prunecli"):
            b = build_datasets({"name": "coco", "root": str(root), "image_size": size})
        ann = b.train.annotations
        sizes = object_sizes(ann, size)
        objects = int((~ann.ignore).sum())
        assert sizes["small"] + sizes["medium"] + sizes["large"] == objects
        assert ("of the training objects are under 8 px at the 16 px input" in caplog.text) \
            == warned
        if warned:
            assert f"{round(100 * sizes['tiny'] / objects)}%" in caplog.text

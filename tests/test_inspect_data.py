"""``prunecli inspect data=``: a dataset read as training reads it, every image decoded, and
every file that would stop training listed at once (training stops at the first, mid-epoch)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.det_fixtures import make_coco


def test_inspect_lists_every_image_that_would_stop_training(run_cli, tmp_path: Path,
                                                             capsys) -> None:
    root = make_coco(tmp_path / "coco", n_images=6)
    clean = run_cli("inspect", "data=coco", f"data.root={root}", run_dir=tmp_path / "i1")
    said = " ".join(capsys.readouterr().out.split())
    assert clean is not None and "every image decodes at its annotated size" in said
    images = json.loads((root / "annotations" / "instances_train2017.json").read_text())["images"]
    # two problems in the training split: a truncated file and an image resized after labelling
    first, second = (root / "train2017" / images[k]["file_name"] for k in (0, 3))
    first.write_bytes(first.read_bytes()[:100])
    with Image.open(second) as im:
        im.resize((im.width * 2, im.height * 2)).save(second)
    with pytest.raises(SystemExit) as err:
        run_cli("inspect", "data=coco", f"data.root={root}", run_dir=tmp_path / "i2")
    assert err.value.code == 2
    out = capsys.readouterr()
    listed = " ".join(out.out.split())
    assert f"train: cannot decode {first}" in listed
    assert f"train: {second} is {2 * images[3]['width']}x{2 * images[3]['height']} pixels but" \
        in listed
    assert "2 images of data=coco would stop training" in out.err
    # the split table: the 4 training images with objects, 2 of them decode at their size
    assert re.search(r"train\s*│\s*4\s*│\s*2 of 4\s*│", out.out)
    assert re.search(r"val\s*│\s*6\s*│\s*6 of 6\s*│", out.out)


def test_inspect_of_an_imagefolder_and_of_data_in_memory(run_cli, tmp_path: Path,
                                                         capsys) -> None:
    from tests.test_data import write_imagefolder

    root = write_imagefolder(tmp_path / "ds")
    broken = root / "val" / "dog" / "img1.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit):
        run_cli("inspect", "data=imagefolder", f"data.root={root}", "data.image_size=32",
                run_dir=tmp_path / "i1")
    out = capsys.readouterr()
    assert f"val: cannot read {broken} as an image" in " ".join(out.out.split())
    assert "1 images of data=imagefolder would stop training" in out.err
    run_cli("inspect", "data=fake", "data.train_size=16", "data.val_size=8",
            run_dir=tmp_path / "i2")
    assert "nothing to decode: the images are held in memory" in capsys.readouterr().out

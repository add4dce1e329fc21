"""The configs travel with the package: a built wheel, run from another folder, finds its
primary configs, groups and experiments (Hydra's `config_path` trap)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_and_finds_its_configs(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("prunecli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("prunecli/conf/train.yaml", "prunecli/conf/model/resnet20.yaml",
                   "prunecli/conf/experiment/smoke.yaml",
                   "prunecli/data/embedded/fashion_mnist_20k_4k.xz",
                   "prunecli/engine/trainer.py"):
        assert needed in names, needed
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import prunecli, sys; assert prunecli.__file__.startswith(sys.argv[1]), "
            "prunecli.__file__")
    check = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    job = subprocess.run([sys.executable, "-m", "prunecli", "train", "experiment=smoke",
                          "model=resnet56", "--cfg", "job"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "name: fake" in job.stdout and "name: resnet56" in job.stdout

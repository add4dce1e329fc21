"""Package list for setuptools: the code under prunecli/ plus the top-level config folders,
which pyproject.toml maps to prunecli.conf and prunecli.conf.experiment."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["prunecli", "prunecli.*"]), "prunecli.conf",
                "prunecli.conf.experiment"])

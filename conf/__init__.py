"""Hydra configs of prunecli (installed as the package prunecli.conf)."""

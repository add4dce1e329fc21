"""Experiment configs (installed as prunecli.conf.experiment: use experiment=NAME)."""

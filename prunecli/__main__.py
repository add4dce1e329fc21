"""``python -m prunecli ...`` (what ``torchrun -m prunecli train ...`` runs)."""

from prunecli.cli import main

main()

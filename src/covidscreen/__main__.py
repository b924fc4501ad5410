"""``python -m covidscreen`` (and ``torchrun -m covidscreen``) runs the CLI."""

from .cli import main

main()

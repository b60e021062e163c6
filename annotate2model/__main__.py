"""`python -m annotate2model` runs the same CLI as `a2m`."""

from annotate2model.cli.app import main

main()

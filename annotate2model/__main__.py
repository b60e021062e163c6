"""`python -m annotate2model` runs the same CLI as `a2m`."""

from annotate2model.cli.app import main

if __name__ == "__main__":  # not when a spawned worker imports it (multiprocessing)
    main()

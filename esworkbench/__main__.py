"""`python -m esworkbench` runs the command-line interface."""

from esworkbench.cli import main

if __name__ == "__main__":
    main()

"""`python -m esworkbench` runs the command-line interface."""

from esworkbench.cli import main

main()

"""Reference production domains the workbench replays (``esworkbench.examples.bank``)."""

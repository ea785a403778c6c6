"""Peak resident memory of this process, for the bench scripts' figures."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak RSS in MB since it started its program.

    Linux's VmHWM belongs to the program's own address space. `ru_maxrss` is not the figure
    for a child started by a bench: Linux carries the parent's resident size over the fork
    into it, so a child of a parent that had just built a large lake reported the parent's
    gigabytes as its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

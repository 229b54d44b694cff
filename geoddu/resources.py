"""How much memory this process has used (for summaries and benchmarks)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak resident set size in MB.

    VmHWM rather than ru_maxrss: Linux carries ru_maxrss over exec, so a process started by a
    big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

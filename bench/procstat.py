"""What Linux knows about a process (/proc): CPU seconds and memory.

The bench reads the server's figures from outside, so that measuring costs
the server nothing and counts all of its threads (fsync, hashing) and, with
``--workers``, its worker processes (the ``tree_`` functions).
"""

from __future__ import annotations

import os
import resource

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list:
    """The fields of /proc/<pid>/stat after the command name: [0] is the
    state, [1] the parent pid, [11] utime, [12] stime, [13] cutime, [14] cstime."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after it do not.
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the whole process so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list:
    """The pids whose parent is pid, now."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat(int(name))[1]) == pid:
                    found.append(int(name))
            except (OSError, IndexError, ValueError):
                pass  # ended meanwhile
    return sorted(found)


def tree(pid: int) -> list:
    """pid and its descendants, parents first."""
    pids = [pid]
    for child in children(pid):
        pids += tree(child)
    return pids


def tree_cpu_seconds(pid: int) -> dict:
    """{pid: CPU seconds so far} of pid and each living descendant; each
    figure includes the children it has reaped (a worker that died)."""
    cpu = {}
    for member in tree(pid):
        try:
            fields = _stat(member)
        except OSError:
            continue  # ended meanwhile
        cpu[member] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICKS
    return cpu


def tree_memory_kib(pid: int, key: str) -> int:
    """memory_kib summed over pid and its descendants (for VmHWM the sum
    of each one's peak, which is no less than what they held at once)."""
    total = 0
    for member in tree(pid):
        try:
            total += memory_kib(member, key)
        except (OSError, KeyError):
            pass
    return total


def memory_kib(pid: int, key: str) -> int:
    """A line of /proc/<pid>/status in KiB: VmRSS (now) or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 1,000 uploads need sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

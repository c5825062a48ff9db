"""Process statistics read from ``/proc`` (no psutil): CPU seconds of a process tree, memory
fields, whether a process loaded TensorFlow. Off Linux every figure is ``None``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "delta",
    "descendants",
    "loaded_tensorflow",
    "machine_s",
    "own_cpu_s",
    "status_mb",
    "tree_cpu_s",
]


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


_TICKS = _clock_ticks()


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks: utime + stime + cutime + cstime) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state, ppid, ... utime is field 14 (index 11 here), stime 15,
    # cutime 16 (reaped children), cstime 17.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), sum(int(x) for x in rest[11:15])


def _have_proc() -> bool:
    return _stat(os.getpid()) is not None


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (ppid, ticks)."""
    out: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                out[int(entry.name)] = stat
    return out


def _tree(root: int, procs: dict[int, tuple[int, int]]) -> set[int]:
    """``root`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def descendants(root: int) -> set[int]:
    """``root`` and every live process below it, by parent pid (also those that started a
    session of their own); empty off Linux."""
    return _tree(root, _processes()) if _have_proc() else set()


def tree_cpu_s(root: int, exclude: frozenset[int] = frozenset()) -> float | None:
    """CPU seconds of ``root`` and its descendants (live ones, and reaped ones through their
    parents' cutime/cstime); ``None`` off Linux. Subtrees rooted at ``exclude`` are left out."""
    if not _have_proc():
        return None
    procs = _processes()
    skip: set[int] = set()
    for pid in exclude:
        skip |= _tree(pid, procs)
    pids = _tree(root, procs) - skip
    return sum(procs[pid][1] for pid in pids) / _TICKS


def status_mb(field: str, pid: int | None = None) -> float | None:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM) in MB (default: this process);
    ``None`` off Linux or when the process is gone."""
    try:
        where = "self" if pid is None else str(pid)
        for line in Path(f"/proc/{where}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def loaded_tensorflow(pid: int) -> bool | None:
    """Whether process ``pid`` has TensorFlow's library mapped (``None`` without /proc)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
            return any("libtensorflow" in line for line in fh)
    except OSError:
        return None


def own_cpu_s() -> float | None:
    stat = _stat(os.getpid())
    return None if stat is None else stat[1] / _TICKS


def delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


MACHINE_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_s() -> dict[str, float] | None:
    """Seconds every CPU of the machine spent in each state since boot, summed over CPUs
    (``/proc/stat``'s ``cpu`` line): ``busy`` (user, nice, system, irq, softirq), ``idle``,
    ``iowait`` (idle with a disk read outstanding) and ``steal`` (taken by the hypervisor for
    other machines). Deltas of two readings say what slowed a timing that a process's own CPU
    seconds do not show. None without ``/proc``."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    ticks = dict(zip(MACHINE_STATES, (int(x) / _TICKS for x in first[1:9]), strict=False))
    busy = sum(ticks.get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))
    return {
        "busy": busy,
        "idle": ticks.get("idle", 0.0),
        "iowait": ticks.get("iowait", 0.0),
        "steal": ticks.get("steal", 0.0),
    }

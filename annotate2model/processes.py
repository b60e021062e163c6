"""Whether a recorded process still runs, asked of psutil: the one way the package tells a live
writer, training or Label Studio server from a dead one or from another process under its pid."""

from __future__ import annotations

# psutil reads start times back with a clock tick's resolution, on a boot time that may drift by
# a second: two readings within this many seconds are the same start.
START_TOLERANCE_S = 1.0


def start_time(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch; None when it cannot be read."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def running(
    pid: int, started: float | None = None, *, commands: tuple[str, ...] = ()
) -> bool | None:
    """True when process `pid` runs and is the one recorded: it started at `started` (when given;
    another start is another process under a reused pid) and its command line holds one of
    `commands` (when given). False when it is gone, a zombie or another process; None when it
    cannot be read (another user's)."""
    import psutil

    if pid <= 0:
        return False  # never a process of ours (psutil refuses a negative pid)
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # killed, and only waiting for its parent to read its exit status
        if started is not None and abs(process.create_time() - started) > START_TOLERANCE_S:
            return False
        line = " ".join(process.cmdline()) if commands else ""
        return not commands or any(command in line for command in commands)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None

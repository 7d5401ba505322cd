"""Run a command (QEMU) and end it when the process that started this one ends.

    python lifeline.py [--lifetime-s SECONDS] -- COMMAND [ARG...]

Started by ``EmulatedBoard`` with a pipe as its stdin whose write end only the starting
process holds. When that process ends, however it ends (SIGKILL and crashes included), the
kernel closes the write end, stdin reads end-of-file, and this process stops the command:
SIGTERM, then SIGKILL after 3 s. The same happens on SIGTERM, SIGINT or SIGHUP to this
process, after ``--lifetime-s``, or when the starter closes the pipe itself. When the command
exits first, this process exits with its status (128 + N for a signal N). The first line on
stdout is the command's process id.

Why not ``prctl(PR_SET_PDEATHSIG)`` in a ``preexec_fn``: a ``preexec_fn`` runs Python between
``fork`` and ``exec``, which is unsafe in a process that has threads (a lock another thread held
at the fork stays locked in the child forever), and the death signal fires when the *thread*
that forked exits, so a board started from a short-lived thread was killed with it. The pipe
ends with the process, not a thread, and needs nothing in the child between fork and exec.
One limit: a child made with a bare ``os.fork`` (multiprocessing's fork start method) also
holds the write end, and the command then lives until that child ends too.

This file is run as a script (``python -I lifeline.py``), so it imports nothing from nanofly.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

STOP_GRACE_S = 3.0
USAGE = "usage: lifeline.py [--lifetime-s SECONDS] -- COMMAND [ARG...]"


_stop_requested = False


def _on_signal(signum, frame) -> None:
    global _stop_requested
    _stop_requested = True  # the wakeup pipe makes the select() below return


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _parse(argv: list[str]) -> tuple[float | None, list[str]]:
    lifetime_s = None
    if "--" not in argv:
        raise SystemExit(USAGE)
    options, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    if options[:1] == ["--lifetime-s"] and len(options) == 2:
        try:
            lifetime_s = float(options[1])
        except ValueError:
            raise SystemExit(USAGE) from None
    elif options:
        raise SystemExit(USAGE)
    if not command:
        raise SystemExit(USAGE)
    return lifetime_s, command


def main(argv: list[str] | None = None) -> int:
    lifetime_s, command = _parse(sys.argv[1:] if argv is None else argv)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    deadline = None if lifetime_s is None else time.monotonic() + lifetime_s
    try:
        # the command's output goes where ours (stderr) goes; stdout is the starter's pipe
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                 stderr=sys.stderr.fileno())
    except OSError as exc:
        print(f"lifeline: cannot start {command[0]}: {exc}", file=sys.stderr)
        return 127
    print(child.pid, flush=True)
    stdin = sys.stdin.fileno()
    watch = [stdin, wakeup_read]
    try:
        watch.append(os.pidfd_open(child.pid))  # readable once the child exits (Linux 5.3+)
        poll_s = None
    except (AttributeError, OSError):
        poll_s = 0.2
    while child.poll() is None and not _stop_requested:
        wait_s = poll_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait_s = left if wait_s is None else min(wait_s, left)
        ready, _, _ = select.select(watch, [], [], wait_s)
        if wakeup_read in ready:
            os.read(wakeup_read, 512)
        if stdin in ready and not os.read(stdin, 4096):
            break  # end of file: the starter closed the pipe or is gone
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return _exit_status(child.returncode)


if __name__ == "__main__":
    raise SystemExit(main())

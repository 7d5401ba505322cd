"""Run the bridge firmware on QEMU's netduinoplus2 (an STM32F405) as an emulated board.

``with EmulatedBoard() as board: client = BridgeClient(board.url)`` builds the firmware if
needed, starts QEMU on a free TCP port (``qemu_command``), waits until the
firmware answers HELLO, and always shuts QEMU down: on exit, on garbage collection, at
interpreter exit, after ``lifetime_s``, and when the process that started it ends in any way
(SIGKILL included). QEMU runs under ``lifeline.py``, which watches a pipe that only this
process holds open and stops QEMU when it reads end-of-file (why not PR_SET_PDEATHSIG: see
there). The lifeline and QEMU form their own process group, killed together as a last resort.
"""
from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

QEMU = "qemu-system-arm"
QEMU_HINT = "install it with: apt-get install -y --no-install-recommends qemu-system-arm"


class EmulatorError(RuntimeError):
    """QEMU is missing, failed to start, or the firmware did not answer."""


def qemu_missing() -> str | None:
    return None if shutil.which(QEMU) else f"{QEMU} not found; {QEMU_HINT}"


def qemu_command(elf: str | os.PathLike, port: int, host: str = "127.0.0.1") -> list[str]:
    """QEMU's command line for the board: icount makes TIM5 count instructions;
    ``wait=on`` holds the guest until the first client connects (no early output lost);
    ``nodelay=on`` avoids ~44 ms of Nagle delay per small reply."""
    return [QEMU, "-M", "netduinoplus2", "-display", "none", "-monitor", "none",
            "-icount", "shift=0", "-kernel", str(elf),
            "-serial", f"tcp:{host}:{port},server=on,wait=on,nodelay=on"]


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


LIFELINE = Path(__file__).resolve().with_name("lifeline.py")
LIFELINE_START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0  # the lifeline gives QEMU 3 s after SIGTERM, then SIGKILL


_LIVE: "weakref.WeakSet[EmulatedBoard]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for board in list(_LIVE):
        board.stop()


class EmulatedBoard:
    """A QEMU-emulated STM32F405 running the bridge firmware, reachable at :attr:`url`.

    ``elf``: firmware to run (default: build it); ``lifetime_s``: kill QEMU after this many
    seconds whatever happens (None: no limit); ``boot_timeout_s``: how long to wait for the
    firmware's first HELLO reply; ``qemu_args``: more QEMU options (tests: ``-gdb``, ``-d``).
    :attr:`proc` is the lifeline process, :attr:`pid` QEMU's process id."""

    def __init__(self, elf: str | os.PathLike | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, lifetime_s: float | None = None,
                 boot_timeout_s: float = 15.0, qemu_args: tuple[str, ...] | list[str] = ()):
        self.elf = Path(elf) if elf else None
        self.host = host
        self.port = port
        self.lifetime_s = lifetime_s
        self.boot_timeout_s = boot_timeout_s
        self.qemu_args = list(qemu_args)
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.hello = None
        self._log = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmulatorError("board not started")
        return f"socket://{self.host}:{self.port}"

    def __enter__(self) -> "EmulatedBoard":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        self.stop()

    def start(self) -> "EmulatedBoard":
        missing = qemu_missing()
        if missing:
            raise EmulatorError(missing)
        if self.elf is None:
            from .firmware import build_firmware

            self.elf = build_firmware()
        if not self.elf.is_file():
            raise EmulatorError(f"{self.elf}: firmware not found (`nanofly firmware build`)")
        fixed_port = self.port
        last_error = None
        for _ in range(3 if fixed_port is None else 1):  # a picked port can be taken meanwhile
            self.port = fixed_port or free_tcp_port(self.host)
            self._log = tempfile.TemporaryFile(prefix="nanofly-qemu-")
            lifeline = [sys.executable, "-I", str(LIFELINE)]
            if self.lifetime_s:
                lifeline += ["--lifetime-s", str(float(self.lifetime_s))]
            command = lifeline + ["--", *qemu_command(self.elf, self.port, self.host),
                                  *self.qemu_args]
            # stdin: the pipe the lifeline watches (only this process holds its write end);
            # stdout: QEMU's pid; its own session, so no terminal's Ctrl+C reaches QEMU
            # directly and the group can be killed as one
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, start_new_session=True)
            _LIVE.add(self)
            try:
                self.pid = self._read_qemu_pid()
                self._wait_for_firmware()
                return self
            except EmulatorError as exc:
                last_error = exc
                self.stop()
        raise last_error

    def _read_qemu_pid(self) -> int:
        ready, _, _ = select.select([self.proc.stdout], [], [], LIFELINE_START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise EmulatorError(f"QEMU did not start: {self.log_tail() or 'no output'}")
        return int(line)

    def _wait_for_firmware(self) -> None:
        """Connect (this starts the guest: wait=on) and wait for a HELLO reply."""
        from .client import BridgeClient, LinkError

        deadline = time.monotonic() + self.boot_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmulatorError(f"QEMU exited with code {self.proc.returncode}: {self.log_tail()}")
            try:
                # Bytes sent before the firmware enables its UART are lost: short retries.
                with BridgeClient(self.url, timeout_s=0.2, retries=5, open_timeout_s=0.5) as probe:
                    self.hello = probe.hello()
                    return
            except LinkError:
                time.sleep(0.05)
        raise EmulatorError(f"firmware on {self.url} did not answer HELLO within "
                            f"{self.boot_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, n_bytes: int = 2000) -> str:
        if self._log is None or self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - n_bytes))
        return self._log.read().decode(errors="replace").strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop QEMU: close the lifeline's pipe (it sends SIGTERM, then SIGKILL after 3 s);
        if it has not ended after that, kill the lifeline and QEMU as a process group. Safe to
        call twice."""
        proc, self.proc = getattr(self, "proc", None), None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:  # a broken pipe when the lifeline is gone already
                    pass
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=STOP_TIMEOUT_S)
        log, self._log = getattr(self, "_log", None), None
        if log is not None:
            log.close()

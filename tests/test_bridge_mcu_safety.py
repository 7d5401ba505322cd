"""Safety of the bridge firmware on the emulated STM32F405 (QEMU netduinoplus2), and of the
QEMU launcher:

- a repeated ARM after the dead man's switch tripped is done again, not answered "armed" from
  the reply cache while the board is disarmed;
- the independent watchdog (IWDG) is started at boot and reloaded while the firmware runs.
  QEMU does not emulate the IWDG (its registers are an "unimplemented device": writes are
  logged with ``-d unimp`` and ignored, so it never resets the guest); the test reads the
  firmware's register writes from that log;
- a HardFault (forced through QEMU's gdbstub: the program counter set to unmapped memory)
  zeroes the motor outputs at once, and the watchdog is no longer reloaded (on silicon: a
  reset follows);
- QEMU outlives the thread that started it, and dies with the process that started it.

One emulated board (with gdbstub and the unimp log) is shared by the firmware tests; the fault
test runs last, since it leaves the board stuck in its fault handler."""
from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.client import BridgeClient, upload_model
from nanofly.firmware_bridge.emulator import EmulatedBoard, free_tcp_port, qemu_missing
from nanofly.firmware_bridge.firmware import build_firmware, toolchain_missing

from helpers import bridge as T

pytestmark = pytest.mark.skipif(bool(toolchain_missing() or qemu_missing()),
                                reason=f"{toolchain_missing() or qemu_missing()}")

IWDG_WRITE = re.compile(r"^(\S+): unimplemented device write \(size 4, offset 0x(0[0-9a-f]{2}), "
                        r"value 0x([0-9a-f]{8})\)")


@pytest.fixture(scope="module")
def elf():
    return build_firmware()


@pytest.fixture(scope="module")
def board(elf, tmp_path_factory):
    log = tmp_path_factory.mktemp("qemu") / "unimp.log"
    gdb_port = free_tcp_port()
    with EmulatedBoard(elf, lifetime_s=300, qemu_args=[
            "-gdb", f"tcp:127.0.0.1:{gdb_port}", "-d", "unimp", "-D", str(log)]) as b:
        b.gdb_port, b.unimp_log = gdb_port, log
        with BridgeClient(b.url) as c:
            upload_model(c, T.f32_blob((146, 8, 4), seed=3), "f32", model_id=1)
        yield b


def watchdog_writes(log) -> list[tuple[int, int]]:
    """(register offset, value) of every write to the IWDG's registers, in order. QEMU names
    the unimplemented device at 0x40003000 differently across versions ("I2S2ext" in 7.2), so
    it is found by its keys: 0xCCCC (start) and 0x5555 (unlock) at offset 0."""
    writes: dict[str, list[tuple[int, int]]] = {}
    for line in open(log, errors="replace"):
        m = IWDG_WRITE.match(line)
        if m:
            writes.setdefault(m.group(1), []).append((int(m.group(2), 16), int(m.group(3), 16)))
    iwdg = [w for w in writes.values() if (0x000, 0x5555) in w and (0x000, 0xCCCC) in w]
    assert len(iwdg) == 1, f"no IWDG start sequence in the QEMU log: {sorted(writes)}"
    return iwdg[0]


def reloads(log) -> int:
    return watchdog_writes(log).count((0x000, 0xAAAA))


def test_repeated_arm_after_the_failsafe_is_done_again_not_answered_from_cache(board):
    with BridgeClient(board.url) as c:
        trips = c.status().failsafe_trips
        c.arm()
        seq = c._seq
        time.sleep(0.35)  # no frame at all: the cache holds the ARM reply; the switch trips
        c._seq = (seq - 1) & 0xFF
        c.arm()  # the same frame again (same seq and bytes): a host retry
        assert c._seq == seq
        status = c.status()
        try:
            assert status.failsafe_trips == trips + 1
            # answered OK, so the board must be armed now (it used to stay disarmed)
            assert status.armed and not status.failsafe_tripped
        finally:
            c.disarm()


def test_watchdog_started_at_boot_and_reloaded_while_running(board):
    writes = watchdog_writes(board.unimp_log)
    assert writes[:5] == [(0x000, 0xCCCC), (0x000, 0x5555), (0x004, 3), (0x008, 500),
                          (0x000, 0xAAAA)]  # start, unlock, LSI / 32, 500 ticks, reload
    before = reloads(board.unimp_log)
    time.sleep(0.3)  # idle: the main loop wakes on every 10 ms tick
    assert reloads(board.unimp_log) - before >= 10


def test_hardfault_zeroes_motor_outputs_and_stops_reloading_the_watchdog(board, elf):
    symbols = T.elf_symbols(elf)
    motor_output = symbols["motor_output"]
    obs = T.observations(1, seed=5)[0]
    with BridgeClient(board.url) as c:
        for _ in range(3):  # the heartbeat-to-halt window is 200 ms of emulated time
            c.arm()
            c.infer(obs)
            time.sleep(0.01)  # a control tick (2 ms) copies the action to the outputs
            c.heartbeat()
            gdb = T.GdbStub(board.gdb_port)  # connecting stops the guest (and its clock)
            running = struct.unpack("<4f", gdb.read_memory(motor_output, 16))
            if min(running) > 0:
                break
            gdb.cont()
            gdb.close()
        assert min(running) > 0, running  # armed, flying: the outputs are driven
        reloads_before = reloads(board.unimp_log)
        gdb.set_register(15, 0x3000_0001)  # jump to unmapped memory: a bus fault, escalated
        gdb.cont()
        time.sleep(0.3)
        gdb.interrupt()
        xpsr = gdb.registers()[16]
        assert xpsr & 0x1FF == 3, hex(xpsr)  # in the HardFault handler, and stays there
        assert struct.unpack("<4f", gdb.read_memory(motor_output, 16)) == (0.0, 0.0, 0.0, 0.0)
        at_fault = reloads(board.unimp_log)
        gdb.cont()
        time.sleep(0.3)
        gdb.interrupt()
        assert reloads(board.unimp_log) == at_fault <= reloads_before + 1
        gdb.close()


def test_board_outlives_the_thread_that_started_it(elf):
    """PR_SET_PDEATHSIG fires when the thread that forked QEMU exits."""
    started = []
    thread = threading.Thread(target=lambda: started.append(EmulatedBoard(elf, lifetime_s=60).start()))
    thread.start()
    thread.join()
    board = started[0]
    try:
        time.sleep(0.3)
        assert board.alive()
        with BridgeClient(board.url) as c:
            assert c.hello().observation_dim == 146
    finally:
        board.stop()
    assert not os.path.exists(f"/proc/{board.pid}")


def test_qemu_dies_when_its_parent_process_is_killed(elf):
    script = (f"import sys, time\nfrom nanofly.firmware_bridge.emulator import EmulatedBoard\n"
              f"b = EmulatedBoard({str(elf)!r}, lifetime_s=60).start()\n"
              f"print(b.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        qemu_pid = int(parent.stdout.readline())
        assert os.path.exists(f"/proc/{qemu_pid}")
        parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel cleans up
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{qemu_pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{qemu_pid}")
    finally:
        if parent.poll() is None:
            parent.kill()

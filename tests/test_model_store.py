"""The persistent two-slot model store of the shared protocol core, on the host (ctypes build of
firmware_bridge/core over the file-backed NOR-flash emulator): NOR semantics, persistence across
reboots, refusals while the motors may not stop for flash writes, boot choices when slots are
damaged, a reduced power-cut run, and the linker check that keeps the firmware image out of
the slots."""
from __future__ import annotations

import shutil
import struct
import subprocess
import zlib

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.core_host import HostCore
from nanofly.firmware_bridge.power_cut import run_power_cut_bench

from helpers import bridge as T

SECTOR = 4096  # small sectors keep the images small; two sectors per slot


@pytest.fixture(scope="module")
def blobs():
    return {name: T.f32_blob((146, 8, 4), seed=seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}


def core(path, **kw) -> HostCore:
    kw.setdefault("max_model_bytes", 2 * SECTOR - 32)
    return HostCore(path, sector_bytes=SECTOR, sectors_per_slot=2, **kw)


def test_nor_emulator_erase_sets_ones_program_only_clears_bits(tmp_path):
    path = tmp_path / "flash.bin"
    with core(path) as c:
        assert path.stat().st_size == 4 * SECTOR and set(path.read_bytes()) == {0xFF}  # new: erased
        assert c.nor_program(10, bytes([0xF0, 0x0F])) == 0
        assert c.nor_program(10, bytes([0x3C, 0xFF])) == 0  # a second program cannot set bits
        image = path.read_bytes()
        assert image[10:12] == bytes([0x30, 0x0F]) and image[12] == 0xFF
        assert c.nor_erase(0) == 0  # whole sector 0 back to 0xFF, sector 1 untouched
        c.nor_program(SECTOR, b"\x00")
        c.nor_erase(0)
        image = path.read_bytes()
        assert set(image[:SECTOR]) == {0xFF} and image[SECTOR] == 0
        assert c.nor_erase(4) < 0 and c.nor_program(4 * SECTOR - 1, b"\x00\x00") < 0  # out of range
        # a cut: one more operation completes, the next is torn after 3 bytes, then no power
        c.cut_power_after(1, 3)
        assert c.nor_program(100, b"\x00" * 8) == 0
        assert c.nor_program(200, b"\x00" * 8) < 0
        assert c.nor_program(300, b"\x00") < 0 and not c.powered
        image = path.read_bytes()
        assert image[100:108] == bytes(8) and image[200:208] == bytes(3) + b"\xff" * 5 and image[300] == 0xFF
        assert [k for k, _ in c.flash_trace()] == ["P", "P"]


def test_wrong_sized_image_is_refused_clearly(tmp_path):
    path = tmp_path / "flash.bin"
    path.write_bytes(b"\xff" * 1000)
    with pytest.raises(OSError, match="not a flash image of 16384 bytes"):
        core(path)


def test_model_survives_reboot_and_uploads_alternate_slots(tmp_path, blobs):
    path = tmp_path / "flash.bin"
    with core(path) as c:
        assert c.active() is None and c.infer([0.0] * 146) is None
        hello = P.Hello.decode(c.request(P.CMD_HELLO, P.hello_request()))
        assert hello.max_model_bytes == 2 * SECTOR - 32
        c.upload(blobs["a"], P.FORMAT_F32, 11)
        first = c.active()
        assert first["crc"] == P.model_crc(blobs["a"]) and first["model_id"] == 11
        action = c.infer([0.1] * 146)
    with core(path) as c:  # reboot
        assert c.active() == first and c.infer([0.1] * 146) == action
        c.upload(blobs["b"], P.FORMAT_F32, 12)
        second = c.active()
        assert second["slot"] != first["slot"] and second["sequence"] == first["sequence"] + 1
        status = P.Status.decode(c.request(P.CMD_STATUS))
        assert status.active_crc == P.model_crc(blobs["b"]) and status.staging_state == "empty"
    with core(path) as c:
        assert c.active() == second
        c.upload(blobs["c"], P.FORMAT_F32, 13)  # back into the first slot
        assert c.active()["slot"] == first["slot"]


def test_flash_writes_refused_while_busy_and_active_model_unchanged(tmp_path, blobs):
    path = tmp_path / "flash.bin"
    a, b = blobs["a"], blobs["b"]
    with core(path) as c:
        c.upload(a, P.FORMAT_F32, 1)
        before = path.read_bytes()
        c.set_busy(P.BUSY_FLYING)
        with pytest.raises(P.DeviceError) as err:
            c.request(P.CMD_BEGIN, P.begin_request(len(b), P.model_crc(b), P.FORMAT_F32, 2))
        assert err.value.code == P.ERR_BUSY and err.value.detail0 == P.BUSY_FLYING
        assert "running" in str(err.value) and path.read_bytes() == before  # nothing erased
        # armed in the middle of an upload: CHUNK, COMMIT and ACTIVATE are refused too
        c.set_busy(0)
        c.request(P.CMD_BEGIN, P.begin_request(len(b), P.model_crc(b), P.FORMAT_F32, 2))
        c.request(P.CMD_CHUNK, P.chunk_request(0, b[:1000]))
        c.set_busy(P.BUSY_ARMED)
        with pytest.raises(P.DeviceError, match="armed") as err:
            c.request(P.CMD_CHUNK, P.chunk_request(1000, b[1000:2000]))
        assert err.value.code == P.ERR_BUSY
        c.set_busy(0)
        for offset in range(1000, len(b), 2000):
            c.request(P.CMD_CHUNK, P.chunk_request(offset, b[offset:offset + 2000]))
        c.set_busy(P.BUSY_ARMED)
        with pytest.raises(P.DeviceError):
            c.request(P.CMD_COMMIT)
        c.set_busy(0)
        c.request(P.CMD_COMMIT)
        c.set_busy(P.BUSY_ARMED)
        with pytest.raises(P.DeviceError):
            c.request(P.CMD_ACTIVATE, struct.pack("<I", P.model_crc(b)))
        assert c.active()["crc"] == P.model_crc(a)
        c.set_busy(0)
        c.request(P.CMD_ACTIVATE, struct.pack("<I", P.model_crc(b)))
        assert c.active()["crc"] == P.model_crc(b)


def test_boot_skips_damaged_slots(tmp_path, blobs):
    path = tmp_path / "flash.bin"
    stride = 2 * SECTOR
    with core(path) as c:
        c.upload(blobs["a"], P.FORMAT_F32, 1)
        c.upload(blobs["b"], P.FORMAT_F32, 2)
        newest = c.active()
    older_slot = 1 - newest["slot"]
    image = bytearray(path.read_bytes())
    # one flipped bit in the newest model's weights: its CRC fails, the older model boots
    damaged = bytearray(image)
    damaged[newest["slot"] * stride + 32 + 100] ^= 0x01
    path.write_bytes(damaged)
    with core(path) as c:
        assert c.active()["slot"] == older_slot and c.active()["crc"] == P.model_crc(blobs["a"])
    # a header whose CRC does not match (a torn header program): the slot does not count
    damaged = bytearray(image)
    damaged[newest["slot"] * stride + 8] = 0  # a size byte cleared, as a wrong program leaves it
    path.write_bytes(damaged)
    with core(path) as c:
        assert c.active()["crc"] == P.model_crc(blobs["a"])
    # a header with a valid CRC that names another size: the blob check refuses it
    damaged = bytearray(image)
    base = newest["slot"] * stride
    struct.pack_into("<I", damaged, base + 8, len(blobs["b"]) - 4)
    struct.pack_into("<I", damaged, base + 24, zlib.crc32(bytes(damaged[base:base + 24])))
    path.write_bytes(damaged)
    with core(path) as c:
        assert c.active()["crc"] == P.model_crc(blobs["a"])
    # both slots damaged: no model
    damaged[older_slot * stride] ^= 0xFF
    path.write_bytes(damaged)
    with core(path) as c:
        assert c.active() is None


def test_committed_model_can_still_be_activated_after_a_reboot(tmp_path, blobs):
    path = tmp_path / "flash.bin"
    a, b = blobs["a"], blobs["b"]
    with core(path) as c:
        c.upload(a, P.FORMAT_F32, 1)
        c.upload(b, P.FORMAT_F32, 2, activate=False)  # verified and committed, not activated
    with core(path) as c:
        assert c.active()["crc"] == P.model_crc(a)  # a reboot does not activate it
        assert c.staging_state() == "verified"
        received, state = struct.unpack_from("<IB", c.request(
            P.CMD_BEGIN, P.begin_request(len(b), P.model_crc(b), P.FORMAT_F32, 2)))
        assert received == len(b) and state == P.STAGE_VERIFIED  # resumes: nothing to send
        c.request(P.CMD_ACTIVATE, struct.pack("<I", P.model_crc(b)))
        assert c.active()["crc"] == P.model_crc(b)


def test_oversized_model_and_flash_failure_are_clear_errors(tmp_path, blobs):
    with core(tmp_path / "flash.bin") as c:
        big = 2 * SECTOR
        with pytest.raises(P.DeviceError) as err:
            c.request(P.CMD_BEGIN, P.begin_request(big, 0, P.FORMAT_F32, 1))
        assert err.value.code == P.ERR_SIZE and err.value.detail1 == 2 * SECTOR - 32
        c.cut_power_after(0)  # the erase of BEGIN finds no power
        with pytest.raises(P.DeviceError) as err:
            c.upload(blobs["a"], P.FORMAT_F32, 1)
        assert err.value.code == P.ERR_FLASH and "unchanged" in str(err.value)


def test_power_cuts_never_boot_a_torn_model(tmp_path, blobs):
    """Reduced bench/bench_model_store.py: every operation of two uploads, a few tears each."""
    r = run_power_cut_bench(blobs["a"], P.FORMAT_F32, blobs["b"], P.FORMAT_F32, chunk=512,
                            tears_per_op=4, recover_every=5, work_dir=tmp_path)
    assert r["cuts"] >= 150 and r["cuts_during_erase"] > 0
    assert r["boots_torn_or_unverified"] == 0 and r["boots_no_model"] == 0, r["failures"]
    assert r["boots_old_or_new"] == r["cuts"]
    assert r["boots_old_model"] > 0 and r["boots_new_model"] > 0
    assert r["uploads_after_cut_ok"] > 0 and r["uploads_after_cut_failed"] == 0


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
def test_linker_refuses_an_image_that_reaches_the_model_slots(tmp_path):
    from nanofly.firmware_bridge.firmware import FIRMWARE_DIR, export_c_dir

    script = (FIRMWARE_DIR / "stm32f405.ld").read_text()
    assert "_model_slots_start = 0x080C0000;" in script
    # pretend the slots start 4 KB into flash: the ~13 KB image now overlaps them
    (tmp_path / "low_slots.ld").write_text(script.replace("_model_slots_start = 0x080C0000;",
                                                          "_model_slots_start = 0x08001000;"))
    proc = subprocess.run(["make", "-C", str(FIRMWARE_DIR), f"BUILD={tmp_path / 'build'}",
                           f"EXPORT_C={export_c_dir()}", f"LDSCRIPT={tmp_path / 'low_slots.ld'}", "-j2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "flash overflow: the image reaches flash sector 10" in proc.stdout + proc.stderr


def _rerun_from_reset(gdb_port: int, elf) -> None:
    """Run the firmware again from its reset handler (stack pointer from the vector table,
    thread mode): what a reset does to the core, with SRAM (QEMU's emulated slots) kept.
    QEMU's own system reset is not reachable through its gdbstub."""
    sym = T.elf_symbols(elf)
    gdb = T.GdbStub(gdb_port)  # connecting stops the guest
    try:
        gdb.set_register(13, sym["_estack"])
        gdb.set_register(15, sym["Reset_Handler"] & ~1)
        gdb.set_register(16, 1 << 24)  # xPSR: Thumb, no exception active
        gdb.cont()
    finally:
        gdb.close()


def test_bridge_firmware_boots_its_stored_models_on_qemu(tmp_path, blobs):
    """The bridge firmware under QEMU (slots in SRAM with NOR semantics): after a restart the
    boot scan activates the stored model, a committed one can still be activated, and an
    upload while armed is refused with BUSY and changes nothing."""
    from nanofly.firmware_bridge.client import BridgeClient, upload_model
    from nanofly.firmware_bridge.emulator import EmulatedBoard, free_tcp_port, qemu_missing
    from nanofly.firmware_bridge.firmware import build_firmware, toolchain_missing

    if qemu_missing() or toolchain_missing():
        pytest.skip(qemu_missing() or toolchain_missing())
    elf = build_firmware()
    gdb_port = free_tcp_port()
    a, b = blobs["a"], blobs["b"]
    with EmulatedBoard(elf, lifetime_s=120, qemu_args=["-gdb", f"tcp:127.0.0.1:{gdb_port}"]) as board, \
            BridgeClient(board.url) as c:
        upload_model(c, a, "f32", model_id=21)
        upload_model(c, b, "f32", model_id=22, activate=False)
        c.arm()
        try:
            with pytest.raises(P.DeviceError) as err:
                c.begin(len(blobs["c"]), P.model_crc(blobs["c"]), P.FORMAT_F32, 23)
            assert err.value.code == P.ERR_BUSY and err.value.detail0 == P.BUSY_ARMED
        finally:
            c.disarm()
        status = c.status()
        assert status.active_crc == P.model_crc(a) and status.staging_state == "verified"
        uptime = status.uptime_ms
        _rerun_from_reset(gdb_port, elf)
        hello = c.hello()
        status = c.status()
        assert status.uptime_ms < uptime  # it did start again (uptime from 0)
        assert (hello.active_crc, hello.active_model_id) == (P.model_crc(a), 21)
        assert status.staging_state == "verified"  # b: committed before the restart
        c.activate(P.model_crc(b))
        _rerun_from_reset(gdb_port, elf)
        assert c.hello().active_crc == P.model_crc(b)
        np_obs = T.observations(1)[0]
        assert c.infer(np_obs)[2] == P.model_crc(b)

"""The STM32F405 firmware builds with make + arm-none-eabi-gcc from the package's sources
(the export stage's C runtime compiled straight from nanofly/export/c), fits the real chip's
128 KB SRAM with no CCM use, and has a sane vector table."""
from __future__ import annotations

import json
import struct
import subprocess

import pytest

from nanofly.firmware_bridge.firmware import (FirmwareBuildError, build_firmware, export_c_dir,
                                              firmware_size, toolchain_missing)

pytestmark = pytest.mark.skipif(bool(toolchain_missing()), reason=str(toolchain_missing()))


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    return build_firmware(tmp_path_factory.mktemp("fw_build"))


def _sections(elf) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    secs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            secs[parts[0]] = (int(parts[1]), int(parts[2]))
    return secs


def test_fits_the_real_chip_and_avoids_ccm(elf):
    size = firmware_size(elf)
    assert size["sram_bytes"] <= 128 * 1024 - 4096  # the linker script keeps >= 4 KB of stack
    assert size["flash_bytes"] < 1024 * 1024
    for name, (length, addr) in _sections(elf).items():
        if length == 0 or addr == 0:
            continue
        assert not 0x10000000 <= addr < 0x10010000, f"{name} in CCM (QEMU 7.2 faults there)"
        assert 0x08000000 <= addr < 0x08100000 or 0x20000000 <= addr < 0x20020000, (name, hex(addr))


def test_vector_table(elf, tmp_path):
    raw = tmp_path / "vectors.bin"
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".isr_vector", str(elf), str(raw)],
                   check=True)
    words = struct.unpack(f"<{len(raw.read_bytes()) // 4}I", raw.read_bytes())
    assert len(words) == 16 + 82                   # core exceptions + STM32F405 interrupts
    assert words[0] == 0x20000000 + 128 * 1024     # initial stack: top of the 128 KB SRAM
    for i in (1, 15, 16 + 37):                     # reset, SysTick, USART1
        assert words[i] & 1 and 0x08000000 <= words[i] - 1 < 0x08100000, i
    assert all(w != 0 for w in words[16:]), "every interrupt has a handler"


def test_policy_runtime_compiled_from_the_export_package(elf):
    for unit in ("nanofly_policy.c", "nanofly_validate.c", "kernels/nf_dense_s8.c"):
        deps = (elf.parent / f"{unit.split('/')[-1][:-2]}.d").read_text()
        assert str(export_c_dir() / unit) in deps
    symbols = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    assert " nanofly_model_init" in symbols and " nanofly_policy_act" in symbols
    # fmaf must be the VFMA instruction, not newlib's software routine
    assert " fmaf" not in symbols


def test_missing_runtime_is_a_clear_error(tmp_path):
    with pytest.raises(FirmwareBuildError, match="nanofly_runtime.mk"):
        build_firmware(tmp_path / "b", export_c=tmp_path)


def test_cli_build_json(tmp_path, capsys):
    from nanofly.cli import main

    assert main(["firmware", "build", "--out", str(tmp_path / "cli"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["elf"].endswith("nanofly_bridge.elf") and out["sram_bytes"] <= 128 * 1024

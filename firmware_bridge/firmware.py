"""Building the bridge firmware (arm-none-eabi-gcc) and its host fuzzer (clang + libFuzzer).

The firmware compiles the export stage's C policy runtime (the sources
``export/c/nanofly_runtime.mk`` lists) straight from the installed ``nanofly.export`` package, so
the MCU runs the very code the host backend ``c-int8`` runs.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"
ELF_NAME = "nanofly_bridge.elf"
FUZZER_NAME = "fuzz_bridge"

TOOLCHAIN_HINT = ("install it with: apt-get install -y --no-install-recommends gcc-arm-none-eabi "
                  "libnewlib-arm-none-eabi make")
FUZZ_HINT = "install clang and libFuzzer with: apt-get install -y clang libclang-rt-14-dev"


class FirmwareBuildError(RuntimeError):
    """The toolchain is missing or the firmware did not compile."""


def export_c_dir() -> Path:
    """``nanofly/export/c``: the policy runtime sources shipped with the export package."""
    spec = importlib.util.find_spec("nanofly.export")  # no import: keeps the CLI light
    if spec is None or not spec.submodule_search_locations:
        raise FirmwareBuildError("package nanofly.export not found")
    return Path(list(spec.submodule_search_locations)[0]) / "c"


def default_build_dir() -> Path:
    """``firmware/build`` next to the sources when writable (a checkout), else a user cache."""
    local = FIRMWARE_DIR / "build"
    if os.access(FIRMWARE_DIR, os.W_OK):
        return local
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "nanofly" / "firmware"


def toolchain_missing() -> str | None:
    """Why the firmware cannot be built here, or None when it can."""
    for tool in ("arm-none-eabi-gcc", "make"):
        if shutil.which(tool) is None:
            return f"{tool} not found; {TOOLCHAIN_HINT}"
    return None


def _run_make(args: list[str], what: str, quiet: bool) -> str:
    cmd = ["make", "-C", str(FIRMWARE_DIR), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise FirmwareBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    if not quiet:
        print(proc.stdout, end="")
    return proc.stdout


def _check_runtime(export_c: Path) -> None:
    if not all((export_c / name).is_file() for name in ("nanofly_policy.h", "nanofly_runtime.mk")):
        raise FirmwareBuildError(f"{export_c}: nanofly_policy.h/nanofly_runtime.mk not found (the "
                                 "export stage's C runtime); pass export_c= / --export-c to point "
                                 "at it")


def _prepare_build(build_dir, export_c) -> tuple[Path, Path]:
    """Resolve the build and export-runtime directories (defaults, runtime check, mkdir)."""
    build_dir = Path(build_dir) if build_dir else default_build_dir()
    export_c = Path(export_c) if export_c else export_c_dir()
    _check_runtime(export_c)
    build_dir.mkdir(parents=True, exist_ok=True)
    return build_dir, export_c


def build_firmware(build_dir: str | os.PathLike | None = None, *, export_c: str | os.PathLike | None = None,
                   extra_cflags: str = "", quiet: bool = True, jobs: int = 2) -> Path:
    """Build (incrementally) and return the path of ``nanofly_bridge.elf``."""
    missing = toolchain_missing()
    if missing:
        raise FirmwareBuildError(missing)
    build_dir, export_c = _prepare_build(build_dir, export_c)
    _run_make([f"-j{jobs}", f"BUILD={build_dir.resolve()}", f"EXPORT_C={export_c.resolve()}",
               f"EXTRA_CFLAGS={extra_cflags}", "all"], "firmware build", quiet)
    return build_dir.resolve() / ELF_NAME


def firmware_size(elf: str | os.PathLike) -> dict:
    """Flash and SRAM use of a built firmware (bytes), from arm-none-eabi-size."""
    out = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True,
                         check=True).stdout.splitlines()[1].split()
    text, data, bss = (int(x) for x in out[:3])
    return {"flash_bytes": text + data, "sram_bytes": data + bss, "sram_limit_bytes": 128 * 1024}


def fuzzer_missing() -> str | None:
    if shutil.which("clang") is None:
        return f"clang not found; {FUZZ_HINT}"
    rt = subprocess.run(["clang", "-print-runtime-dir"], capture_output=True, text=True).stdout.strip()
    if not rt or not list(Path(rt).glob("libclang_rt.fuzzer*")):
        return f"libFuzzer runtime not found in {rt or 'clang runtime dir'}; {FUZZ_HINT}"
    return None


def build_fuzzer(build_dir: str | os.PathLike | None = None, *, export_c: str | os.PathLike | None = None,
                 quiet: bool = True) -> Path:
    """Build the host libFuzzer binary of the frame parser + command handler."""
    missing = fuzzer_missing()
    if missing:
        raise FirmwareBuildError(missing)
    build_dir, export_c = _prepare_build(build_dir, export_c)
    _run_make([f"BUILD={build_dir.resolve()}", f"EXPORT_C={export_c.resolve()}", "fuzz"],
              "fuzzer build", quiet)
    return build_dir.resolve() / "host" / FUZZER_NAME

"""``nanofly crazyflie build``: the nanofly app compiled into the stock Crazyflie firmware.

The app folder written under ``--out`` is an ordinary out-of-tree app of crazyflie-firmware
(``tools/make/oot.mk``), built with the firmware's own make and arm-none-eabi-gcc::

    OUT/
      Makefile, Kbuild, app-config    copied from firmware_bridge/crazyflie/
      nanofly.mk                      generated: the firmware tree and the nanofly sources
      src/Kbuild                      copied from firmware_bridge/crazyflie/src/
      src/nanofly_*_unit.c            generated one-liners including the installed nanofly
                                      sources (app, controller core, export/c policy runtime
                                      and its kernels)
      src/nanofly_model.c             generated: the model blob and its vehicle configuration
      src/nanofly_model.mk            generated: the runtime's buffer limits for this model
      export/                         the int8/f32 export, when --policy is a policy.pt
      build/cf2.bin, cf2.elf          the firmware image (Kbuild output)
      build.log                       make's full output
      nanofly-build.json              the summary (sizes, stack, model)

Nothing is written inside the firmware tree except what the firmware's own version script does
(``git update-index --refresh``). The nanofly sources are compiled where they are installed,
not copied, so the image runs exactly the files the SITL backend compiles for the host.

What a tree needs (``check_firmware_tree``, each with an error naming what is missing): the
out-of-tree build (``tools/make/oot.mk``), the out-of-tree controller API in ``controller.h``,
``controlModeForce`` with ``normalizedForces`` in ``stabilizer_types.h``, a power distribution
that implements that mode (releases before 2025.12 declare it but leave it empty), the vendor
submodules, a git checkout (the version script reads it) and arm-none-eabi-gcc.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nanofly.export.runtime import C_DIR, runtime_sources

from . import crazyflie_tree

APP_DIR = Path(__file__).resolve().parent / "crazyflie"
APP_SRC = APP_DIR / "src"
# Files copied verbatim into the app folder (relative paths there and here).
TEMPLATE_FILES = ("Makefile", "Kbuild", "app-config", "src/Kbuild")
# One-line compilation units in the app folder: unit name -> the nanofly source it includes.
UNITS = {"nanofly_app_unit.c": "nanofly_app.c",
         "nanofly_cf_unit.c": "nanofly_cf.c",
         "nanofly_cf_link_unit.c": "nanofly_cf_link.c",
         "nanofly_cf_flash_unit.c": "nanofly_cf_flash.c",
         # the shared protocol core (firmware_bridge/core), as in the bridge firmware
         "nanofly_frame_unit.c": "frame.c",
         "nanofly_core_unit.c": "nf_core.c",
         "nanofly_store_unit.c": "nf_store.c"}
# The policy runtime (the package's export/c, one unit per source: nanofly_policy_unit.c,
# nanofly_dense_s8_unit.c for kernels/nf_dense_s8.c, ...); src/Kbuild takes their objects from
# NANOFLY_RUNTIME_UNITS in nanofly.mk.
RUNTIME_UNITS = {f"nanofly_{src.stem.removeprefix('nanofly_').removeprefix('nf_')}_unit.c":
                 src.relative_to(C_DIR).as_posix() for src in runtime_sources()}
UNITS.update(RUNTIME_UNITS)
CORE_SRC = Path(__file__).resolve().parent / "core"
MODEL_FILE = "src/nanofly_model.c"
LIMITS_FILE = "src/nanofly_model.mk"
TRANSPORT_FILE = "src/nanofly_transport.mk"
# --uart: the deck UART the app also serves the bridge protocol on (NANOFLY_DECK_UART in C)
DECK_UARTS = {"off": 0, "uart1": 1, "uart2": 2}
PATHS_FILE = "nanofly.mk"
SUMMARY_FILE = "nanofly-build.json"
LOG_FILE = "build.log"
DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "models" / "crazyflie_hover_int8" / "policy.pt"

# The firmware functions whose stack the report follows (names as the compiler emits them).
CONTROLLER_ROOT = "controllerOutOfTree"
POLICY_PATH_ROOT = "nf_cf_step"
STABILIZER_FRAMES = ("stabilizerTask", "controller")  # the stabilizer task down to the OOT call
# What a task switch or an interrupt adds on top of a task's deepest call on a Cortex-M4F under
# FreeRTOS: the exception frame with the FPU registers (26 words) and the port's PendSV save
# of r4-r11, r14 and s16-s31 (26 words).
CONTEXT_SAVE_BYTES = 104 + 104

_SIZE_LINE = re.compile(r"^(Flash|RAM|CCM)\s*\|\s*(\d+)\s*/\s*(\d+)\s*\(\s*([\d.]+)%\)\s*,\s*(\d+)\s+free")


class BuildInputError(ValueError):
    """Bad input (firmware tree, model, output folder): exit status 2, one line."""


class BuildFailed(RuntimeError):
    """make failed: exit status 1; the message carries the end of the build log."""


# ---------------------------------------------------------------------------------------------
# the firmware tree

@dataclass
class FirmwareTree:
    base: Path
    version: str         # `git describe --tags` of the tree, e.g. "2026.08"
    revision: str        # commit, 12 hex digits
    stabilizer_stack_definition: str  # STABILIZER_TASK_STACKSIZE as config.h writes it


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def check_firmware_tree(base: str | os.PathLike | None) -> FirmwareTree:
    """The tree at ``base`` (default ``$CRAZYFLIE_BASE``), checked for everything the app build
    needs; ``BuildInputError`` naming the first thing missing."""
    if base is None or str(base) == "":
        base = os.environ.get(crazyflie_tree.ENV_VAR)
        if not base:
            raise BuildInputError(
                f"no Crazyflie firmware tree: pass --crazyflie-base PATH or set "
                f"{crazyflie_tree.ENV_VAR} (a `git clone --recursive` of "
                f"bitcraze/crazyflie-firmware, release 2025.12 or later)")
    given = Path(base).expanduser()
    if not given.is_dir():
        raise BuildInputError(f"--crazyflie-base {given}: no such directory (give the top folder of "
                              f"a `git clone --recursive` of bitcraze/crazyflie-firmware)")
    try:
        root = crazyflie_tree.check_tree(given)
    except crazyflie_tree.TreeError as exc:
        raise BuildInputError(str(exc)) from exc
    if " " in str(root) or " " in str(APP_DIR):
        raise BuildInputError(f"paths with spaces do not work with the firmware's make: {root} / "
                              f"{APP_DIR}; use a firmware tree and a nanofly install without spaces")
    if not (root / "tools" / "make" / "oot.mk").is_file():
        raise BuildInputError(f"{root}: tools/make/oot.mk is missing: this firmware has no "
                              f"out-of-tree app build (releases 2023 and later have it)")
    controller_h = _read(root / "src/modules/interface/controller/controller.h")
    for name in ("controllerOutOfTreeInit", "controllerOutOfTreeTest", "controllerOutOfTree("):
        if name not in controller_h:
            raise BuildInputError(f"{root}: src/modules/interface/controller/controller.h does not "
                                  f"declare {name.rstrip('(')}: this firmware has no out-of-tree "
                                  f"controller API (releases 2023 and later have it)")
    types_h = _read(root / "src/modules/interface/stabilizer_types.h")
    # (the controller's step parameter is a uint32_t under either of its names, stabilizerStep_t
    # or the older tick, so the app takes both)
    for name in ("controlModeForce", "normalizedForces"):
        if not re.search(rf"\b{name}\b", types_h):
            raise BuildInputError(f"{root}: src/modules/interface/stabilizer_types.h has no "
                                  f"{name}: this firmware cannot take per-motor normalized forces "
                                  f"from a controller (release 2025.12 or later needed)")
    power = _read(root / "src/modules/src/power_distribution_quadrotor.c")
    if "normalizedForces" not in power:
        raise BuildInputError(f"{root}: src/modules/src/power_distribution_quadrotor.c does not "
                              f"implement controlModeForce (it never reads normalizedForces; "
                              f"releases before 2025.12 leave it empty, so the motors would not "
                              f"follow the policy): use release 2025.12 or later")
    vendor = {"vendor/FreeRTOS": "vendor/FreeRTOS/include/FreeRTOS.h",
              "vendor/CMSIS": "vendor/CMSIS/CMSIS/Core/Include/core_cm4.h",
              "vendor/libdw1000": "vendor/libdw1000/inc/libdw1000.h"}
    for module, probe in vendor.items():
        if not (root / probe).is_file():
            raise BuildInputError(f"{root}: the git submodule {module} is empty ({probe} missing): "
                                  f"run `git submodule update --init --recursive` in the tree")
    git = shutil.which("git")
    if git is None:
        raise BuildInputError("git not found: the firmware's version script needs it "
                              "(Debian: apt-get install git)")
    rev = subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    top = subprocess.run([git, "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                         text=True)
    if rev.returncode != 0 or top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
        said = (rev.stderr or top.stderr).strip().splitlines()
        said = f" (git: {said[0]})" if said else ""
        raise BuildInputError(f"{root} is not the top of a git checkout (the firmware's version "
                              f"script runs git there){said}: use a `git clone --recursive` of "
                              f"bitcraze/crazyflie-firmware")
    for tool, hint in (("arm-none-eabi-gcc", "Debian: apt-get install gcc-arm-none-eabi "
                        "libnewlib-arm-none-eabi"), ("make", "Debian: apt-get install make")):
        if shutil.which(tool) is None:
            raise BuildInputError(f"{tool} not found on PATH ({hint})")
    desc = subprocess.run([git, "-C", str(root), "describe", "--tags", "--always", "HEAD"],
                          capture_output=True, text=True)
    config_h = _read(root / "src/config/config.h")
    m = re.search(r"#define\s+STABILIZER_TASK_STACKSIZE\s+(.+)", config_h)
    return FirmwareTree(base=root, version=desc.stdout.strip() or "unknown",
                        revision=rev.stdout.strip()[:12],
                        stabilizer_stack_definition=m.group(1).split("//")[0].strip() if m else "?")


# ---------------------------------------------------------------------------------------------
# the model

@dataclass
class AppModel:
    blob: bytes
    fmt: str                    # "int8" or "f32"
    crc32: int
    layer_sizes: list[int]
    history_length: int
    vehicle: dict[str, Any]     # nf_cf_vehicle's fields (crazyflie_vehicle.controller_vehicle)
    source: str                 # what the user gave
    export_dir: Path
    preset: str | None = None


def _header_define(name: str) -> int:
    """An integer #define of nanofly_cf.h (one definition of the controller's limits)."""
    text = (APP_SRC / "nanofly_cf.h").read_text()
    m = re.search(rf"#define\s+{name}\s+(\d+)u?\b", text)
    if not m:
        raise RuntimeError(f"nanofly_cf.h has no {name}")
    return int(m.group(1))


def check_layout(layer_sizes: list[int], where: str) -> int:
    """The action history length H of a model whose input is the observation contract's
    ``STATE_DIM + ACTION_DIM * H`` (H up to the controller's NF_CF_MAX_HISTORY) and whose output
    is ACTION_DIM rotor commands; ``BuildInputError`` for any other layout (the app's C refuses
    it too, at boot)."""
    from nanofly.policy.observation import ACTION_DIM, STATE_DIM, history_length_of

    max_history = _header_define("NF_CF_MAX_HISTORY")
    n_in, n_out = int(layer_sizes[0]), int(layer_sizes[-1])
    history = history_length_of(n_in)
    if n_out != ACTION_DIM or history is None or history > max_history:
        raise BuildInputError(
            f"{where}: model layout {n_in} inputs -> {n_out} outputs is not what the Crazyflie app "
            f"flies: {STATE_DIM} + {ACTION_DIM} * H inputs (the simulator's observation with an "
            f"action history of H <= {max_history}) and {ACTION_DIM} rotor commands")
    return history


def _check_observation(manifest_obs: Any, history: int, where: str) -> None:
    from nanofly.policy.observation import observation_layout

    if not isinstance(manifest_obs, dict) or "layout" not in manifest_obs:
        return  # older files: the dimensions were checked
    expected = [[name, n] for name, n in observation_layout(history)]
    got = [list(x) for x in manifest_obs["layout"]]
    if got != expected:
        raise BuildInputError(f"{where}: observation layout {got} is not the simulator's "
                              f"{expected}, which the Crazyflie app builds from the state estimate")


def _vehicle(source: dict[str, Any], where: str) -> dict[str, Any]:
    from .crazyflie_vehicle import VehicleConfigError, controller_vehicle

    vehicle = source.get("vehicle")
    if not isinstance(vehicle, dict) or not vehicle.get("params") or not source.get("mdp"):
        raise BuildInputError(
            f"{where} does not record the vehicle parameters and MDP the policy was trained on "
            f"(exports made before they were added to manifest.json): export the policy again "
            f"(`nanofly export POLICY --out DIR`) or pass the policy.pt as --policy")
    try:
        return controller_vehicle(source)
    except (VehicleConfigError, ValueError, TypeError, KeyError) as exc:
        raise BuildInputError(f"{where}: {exc}") from exc


def model_from_export(export_dir: Path, fmt: str, source: str | None = None) -> AppModel:
    """The blob of ``fmt`` in an export directory, checked (manifest, SHA-256, the runtime's
    loader checks, layout) with its vehicle configuration."""
    from nanofly.export.blob import BlobError, read_blob

    manifest_path = export_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildInputError(f"--policy {export_dir}: no readable manifest.json ({exc}); give a "
                              f"policy.pt or a folder written by `nanofly export`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "nanofly-export":
        raise BuildInputError(f"{manifest_path} is not a nanofly export manifest")
    entry = (manifest.get("blobs") or {}).get(fmt)
    if not isinstance(entry, dict):
        raise BuildInputError(f"{export_dir} has no {fmt} model (choose --format int8 or f32)")
    blob_path = export_dir / entry.get("file", f"policy_{fmt}.bin")
    try:
        blob = blob_path.read_bytes()
    except OSError as exc:
        raise BuildInputError(f"{blob_path}: cannot read the model blob ({exc.strerror})") from exc
    import hashlib
    if entry.get("sha256") and hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise BuildInputError(f"{blob_path} does not match its SHA-256 in manifest.json (corrupt or "
                              f"replaced blob): export the policy again")
    try:
        contents = read_blob(blob)
    except BlobError as exc:
        raise BuildInputError(f"{blob_path} is refused by the runtime's loader checks: {exc}") from exc
    where = str(export_dir)
    history = check_layout(contents.widths, where)
    _check_observation(manifest.get("observation"), history, where)
    vehicle = _vehicle(manifest, where)
    return AppModel(blob=blob, fmt=fmt, crc32=contents.crc32, layer_sizes=list(contents.widths),
                    history_length=history, vehicle=vehicle, source=source or str(export_dir),
                    export_dir=export_dir, preset=(manifest.get("vehicle") or {}).get("preset"))


def check_policy_file(policy: Path) -> None:
    """Refuse a policy.pt the app cannot fly before spending time on its export."""
    from nanofly.policy.actor import PolicyFileError, load_policy

    try:
        actor, payload = load_policy(policy)
    except (PolicyFileError, OSError, KeyError, TypeError, RuntimeError) as exc:
        raise BuildInputError(f"--policy {policy}: {exc}") from exc
    history = check_layout(list(actor.layer_sizes), str(policy))
    _check_observation(payload.get("observation"), history, str(policy))
    _vehicle(payload, str(policy))


def prepare_model(policy: str | os.PathLike | None, fmt: str, app_dir: Path,
                  progress: Callable[[str], None]) -> AppModel:
    """The model to compile in: an export directory as it is, or a policy.pt exported into
    ``app_dir/export`` (default: the shipped int8 hover policy). ``app_dir`` is created only
    once the model has passed its checks."""
    from nanofly.export.exporter import ExportError, export_policy

    path = Path(policy).expanduser() if policy is not None else DEFAULT_POLICY
    if policy is None and not path.is_file():
        raise BuildInputError(f"no default policy at {path} (it ships with a source checkout of "
                              f"nanofly): pass --policy POLICY.pt or an export directory")
    if path.is_dir():
        model = model_from_export(path, fmt)
        create_app_dir(app_dir)
        return model
    if not path.is_file():
        raise BuildInputError(f"--policy {path}: no such file or directory")
    check_policy_file(path)
    create_app_dir(app_dir)
    out = app_dir / "export"
    progress(f"exporting {path} to {out} (int8 calibration on simulator rollouts)")
    try:
        export_policy(path, out)
    except ExportError as exc:
        raise BuildInputError(str(exc)) from exc
    return model_from_export(out, fmt, source=str(path))


# ---------------------------------------------------------------------------------------------
# the app folder

def _c_float(x: float) -> str:
    r = repr(float(x))
    if "e" not in r and "." not in r and "inf" not in r and "nan" not in r:
        r += ".0"
    return r + "f"


def model_source(model: AppModel) -> str:
    """src/nanofly_model.c: the blob as little-endian 32-bit words (4-byte aligned, as the
    runtime requires) and ``nanofly_app_vehicle``."""
    blob = model.blob
    if len(blob) % 4:
        raise BuildInputError("model blob size is not a multiple of 4")
    words = [int.from_bytes(blob[i:i + 4], "little") for i in range(0, len(blob), 4)]
    rows = ["    " + ", ".join(f"0x{w:08x}u" for w in words[i:i + 8]) + ","
            for i in range(0, len(words), 8)]
    v = model.vehicle
    k = ", ".join(_c_float(c) for c in v["thrust_coefficients"])
    sizes = "-".join(map(str, model.layer_sizes))
    return f"""/* Generated by `nanofly crazyflie build`; rebuilt on every build, do not edit.
 * Model: {model.source} ({model.fmt}, layers {sizes}, {len(blob)} bytes, CRC-32 0x{model.crc32:08x})
 * Vehicle preset: {model.preset}
 */
#include "nanofly_app_model.h"

const nf_cf_vehicle nanofly_app_vehicle = {{
    .rotor_speed_min = {_c_float(v["rotor_speed_min"])},
    .rotor_speed_max = {_c_float(v["rotor_speed_max"])},
    .thrust_coefficients = {{{k}}},
    .history_reset_action = {_c_float(v["history_reset_action"])},
    .position_error_limit_m = {_c_float(v["position_error_limit_m"])},
    .policy_rate_hz = {int(v["policy_rate_hz"])}u,
}};

const uint32_t nanofly_app_blob_bytes = {len(blob)}u;

const uint32_t nanofly_app_blob_words[{len(words)}] = {{
""" + "\n".join(rows) + "\n};\n"


def _round8(n: int) -> int:
    return (int(n) + 7) // 8 * 8


def runtime_limits(layer_sizes: list[int]) -> tuple[int, int]:
    """``(NANOFLY_MAX_INPUT, NANOFLY_MAX_WIDTH)`` for the runtime compiled into the app: the
    model's widths rounded up to multiples of 8 (the runtime's buffers of one inference are
    sized by them and live on the stabilizer task's small stack; the defaults would take
    1.4 KB of its 1.8 KB)."""
    width = _round8(max(layer_sizes[1:]))
    return max(_round8(layer_sizes[0]), width), width


def limits_file(model: AppModel) -> str:
    n_in, width = runtime_limits(model.layer_sizes)
    return (f"# Generated by `nanofly crazyflie build`: the policy runtime's activation buffers "
            f"sized to the\n# compiled-in model (layers {'-'.join(map(str, model.layer_sizes))}).\n"
            f"NANOFLY_MAX_INPUT := {n_in}\nNANOFLY_MAX_WIDTH := {width}\n")


def paths_file(tree: FirmwareTree) -> str:
    units = " ".join(unit[:-2] + ".o" for unit in RUNTIME_UNITS)
    return (f"# Generated by `nanofly crazyflie build`: the firmware tree this app builds against\n"
            f"# (a `make CRAZYFLIE_BASE=...` on the command line wins) and the installed nanofly\n"
            f"# sources it compiles.\n"
            f"NANOFLY_CRAZYFLIE_BASE := {tree.base}\n"
            f"NANOFLY_APP_SRC := {APP_SRC}\n"
            f"NANOFLY_CORE_SRC := {CORE_SRC}\n"
            f"NANOFLY_RUNTIME_SRC := {Path(C_DIR).resolve()}\n"
            f"NANOFLY_RUNTIME_UNITS := {units}\n"
            f"CRAZYFLIE_BASE := $(NANOFLY_CRAZYFLIE_BASE)\n")


def transport_file(uart: str) -> str:
    return (f"# Generated by `nanofly crazyflie build --uart {uart}`: the deck UART the app serves "
            f"the bridge\n# protocol on besides the radio (0 none, 1 uart1 = USART3 PC10/PC11, "
            f"2 uart2 = USART2 PA2/PA3).\nNANOFLY_DECK_UART := {DECK_UARTS[uart]}\n")


def _write_if_changed(path: Path, text: str) -> None:
    """Unchanged files keep their time stamps, so make recompiles only what changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return
    path.write_text(text)


def check_app_dir(out: str | os.PathLike) -> Path:
    """``out`` as an app folder: new, empty, or an earlier app folder of this command (whose
    objects are reused); anything else is refused. Nothing is created yet."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise BuildInputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / PATHS_FILE).is_file():
        raise BuildInputError(f"--out {out} is a non-empty folder that is not a nanofly Crazyflie "
                              f"app folder; choose a new or empty folder")
    if " " in str(out):
        raise BuildInputError(f"--out {out}: the firmware's make does not work in paths with spaces")
    return out


def create_app_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildInputError(f"--out {out}: cannot create it ({exc.strerror})") from exc


def write_app(app_dir: Path, tree: FirmwareTree, model: AppModel, uart: str = "off") -> None:
    old_paths = (app_dir / PATHS_FILE).read_text() if (app_dir / PATHS_FILE).is_file() else None
    new_paths = paths_file(tree)
    if old_paths is not None and old_paths != new_paths and (app_dir / "build").exists():
        # another firmware tree or nanofly install: objects of the old one must not be reused
        shutil.rmtree(app_dir / "build")
    for rel in TEMPLATE_FILES:
        _write_if_changed(app_dir / rel, (APP_DIR / rel).read_text())
    _write_if_changed(app_dir / PATHS_FILE, new_paths)
    for unit, source in UNITS.items():
        _write_if_changed(app_dir / "src" / unit,
                          f"/* Generated by `nanofly crazyflie build`: compiles the installed "
                          f"nanofly source {source} (include path in src/Kbuild). */\n"
                          f"#include \"{source}\"\n")
    _write_if_changed(app_dir / MODEL_FILE, model_source(model))
    _write_if_changed(app_dir / LIMITS_FILE, limits_file(model))
    _write_if_changed(app_dir / TRANSPORT_FILE, transport_file(uart))


# ---------------------------------------------------------------------------------------------
# make

class _Progress:
    """A short status while make runs: files compiled, the current step, seconds elapsed; one
    line rewritten in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.compiled = 0
        self.step = "configuring"
        self.last = 0.0

    def line(self, text: str) -> None:
        if text.startswith("  CC ") or text.startswith("  AS "):
            self.compiled += 1
            self.step = "compiling"
        elif text.startswith("  LD      firmware") or text.startswith("  LD      cf2"):
            self.step = "linking"
        elif "Merging" in text:
            self.step = "configuring"
        self.show()

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (1.0 if self.tty else 10.0):
            return
        self.last = now
        msg = f"building cf2.bin: {now - self.start:4.0f} s, {self.step}, {self.compiled} files compiled"
        self.stream.write(f"\r{msg}   " if self.tty else msg + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self.show(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_make(app_dir: Path, tree: FirmwareTree, jobs: int, quiet: bool = False) -> str:
    """make in the app folder (the firmware's oot.mk); the whole output goes to build.log and is
    returned. ``BuildFailed`` with the log's end when make fails."""
    cmd = ["make", "-C", str(app_dir), f"-j{max(1, jobs)}", f"CRAZYFLIE_BASE={tree.base}"]
    progress = None if quiet else _Progress()
    log_path = app_dir / LOG_FILE
    lines: list[str] = []
    env = dict(os.environ, LC_ALL="C")
    env.pop("MAKEFLAGS", None)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env)
        try:
            for text in proc.stdout:
                log.write(text)
                lines.append(text)
                if progress:
                    progress.line(text)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if progress:
        progress.finish()
    output = "".join(lines)
    if rc != 0:
        errors = [ln for ln in lines if "error" in ln.lower()][:8]
        tail = "".join(errors) or "".join(lines[-25:])
        raise BuildFailed(f"the firmware build failed (make exit {rc}); full log: {log_path}\n{tail}")
    return output


def parse_sizes(output: str) -> dict[str, dict[str, float]]:
    """Flash/RAM/CCM use as the firmware's size script prints it at the end of a build."""
    sizes = {}
    for line in output.splitlines():
        m = _SIZE_LINE.match(line.strip())
        if m:
            sizes[m.group(1).lower()] = {"used_bytes": int(m.group(2)), "total_bytes": int(m.group(3)),
                                         "used_percent": float(m.group(4)),
                                         "free_bytes": int(m.group(5))}
    return sizes


def object_sizes(app_dir: Path) -> dict[str, dict[str, int]]:
    """text/data/bss of the app's own objects (arm-none-eabi-size, before the linker drops
    unused sections)."""
    size = shutil.which("arm-none-eabi-size")
    out = {}
    if size is None:
        return out
    objs = sorted((app_dir / "src").glob("*.o"))
    objs = [o for o in objs if o.name != "built-in.o"]
    res = subprocess.run([size, *map(str, objs)], capture_output=True, text=True)
    for line in res.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6:
            out[Path(parts[5]).stem] = {"text": int(parts[0]), "data": int(parts[1]),
                                        "bss": int(parts[2])}
    return out


# ---------------------------------------------------------------------------------------------
# stack

@dataclass
class _Fn:
    name: str
    frame: int
    qualifier: str      # static, dynamic, bounded (GCC's -fstack-usage qualifiers)
    callees: list[str] = field(default_factory=list)


_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"\\]+)\\n[^"]*?\\n(\d+) bytes \(([^)]+)\)"')
_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')


def read_call_graphs(folders: list[Path]) -> dict[str, _Fn]:
    """Functions with their frame sizes and direct callees, from GCC's -fcallgraph-info=su
    files (.ci) under ``folders``. Titles are the function's name, or file:name for a static
    one; calls between files are joined by name."""
    fns: dict[str, _Fn] = {}
    edges: list[tuple[str, str]] = []
    for folder in folders:
        for ci in folder.rglob("*.ci"):
            text = _read(ci)
            for title, name, frame, qual in _NODE.findall(text):
                fns[title] = _Fn(name, int(frame), qual)
            edges += _EDGE.findall(text)
    for src, dst in edges:
        if src in fns:
            fns[src].callees.append(dst)
    return fns


def deepest_path(fns: dict[str, _Fn], root: str) -> dict[str, Any]:
    """The call chain from ``root`` that needs the most stack: bytes (sum of the frames),
    the chain, and callees whose stack is unknown (library code compiled elsewhere, calls
    through pointers)."""
    unknown: set[str] = set()
    memo: dict[str, tuple[int, list[str]]] = {}

    def visit(title: str, on_path: frozenset) -> tuple[int, list[str]]:
        if title in memo:
            return memo[title]
        fn = fns.get(title)
        if fn is None:
            unknown.add(title.split(":")[-1])
            return 0, []
        if title in on_path:
            raise RuntimeError(f"recursion through {fn.name}: no bound on its stack")
        best, chain = 0, []
        for callee in dict.fromkeys(fn.callees):
            b, c = visit(callee, on_path | {title})
            if b > best:
                best, chain = b, c
        if fn.qualifier != "static":
            unknown.add(f"{fn.name} ({fn.qualifier} frame)")
        memo[title] = (fn.frame + best, [f"{fn.name} {fn.frame}"] + chain)
        return memo[title]

    if root not in fns:
        return {"bytes": None, "chain": [], "unknown_callees": []}
    total, chain = visit(root, frozenset())
    return {"bytes": total, "chain": chain, "unknown_callees": sorted(unknown)}


def elf_symbol_sizes(elf: Path, names: tuple[str, ...]) -> dict[str, int]:
    nm = shutil.which("arm-none-eabi-nm")
    if nm is None:
        return {}
    res = subprocess.run([nm, "-S", str(elf)], capture_output=True, text=True)
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] in names:
            out[parts[3]] = int(parts[1], 16)
    return out


def store_define(name: str) -> int:
    """An address or size #define of nanofly_cf_flash.h (where the model store's slots are)."""
    text = (APP_SRC / "nanofly_cf_flash.h").read_text()
    m = re.search(rf"#define\s+{name}\s+(0x[0-9A-Fa-f]+|\d+)u?\b", text)
    if m:
        return int(m.group(1), 0)
    m = re.search(rf"#define\s+{name}\s+\((\d+)u\s*\*\s*(\d+)u\)", text)  # (128u * 1024u)
    if not m:
        raise RuntimeError(f"nanofly_cf_flash.h has no {name}")
    return int(m.group(1)) * int(m.group(2))


def image_flash_end(elf: Path) -> int:
    """One past the image's last byte in flash: the highest load address + size of the ELF's
    LOAD segments (program headers, so initialised data copied to RAM counts where it is
    stored)."""
    readelf = shutil.which("arm-none-eabi-readelf") or shutil.which("readelf")
    if readelf is None:
        raise BuildFailed("neither arm-none-eabi-readelf nor readelf is installed: cannot check "
                          "the image against the model store's flash sectors")
    res = subprocess.run([readelf, "-lW", str(elf)], capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildFailed(f"readelf -l {elf} failed: {res.stderr.strip()}")
    end = 0
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0] == "LOAD":
            phys, filesz = int(parts[3], 16), int(parts[4], 16)
            if filesz and 0x08000000 <= phys < 0x08100000:
                end = max(end, phys + filesz)
    if end == 0:
        raise BuildFailed(f"{elf} has no LOAD segment in flash (0x08000000..0x08100000)")
    return end


def check_store_sectors(elf: Path) -> dict[str, Any]:
    """The model store's two slots (nanofly_cf_flash.h) against the image; BuildFailed if the
    image reaches into them (a stored model would overwrite code, and cfloader would erase the
    store)."""
    base = store_define("NF_CF_STORE_BASE")
    slot = store_define("NF_CF_STORE_SLOT_BYTES")
    end = image_flash_end(elf)
    if end > base:
        raise BuildFailed(f"the image ends at 0x{end:08x}, inside the model store's flash sectors "
                          f"(0x{base:08x}..0x{base + 2 * slot:08x}, nanofly_cf_flash.h): make the "
                          f"image smaller (fewer Kconfig features) or move the store")
    return {"image_end": f"0x{end:08x}", "slots": [f"0x{base:08x}", f"0x{base + slot:08x}"],
            "slot_bytes": slot, "margin_bytes": base - end}


def stack_report(app_dir: Path, elf: Path, tree: FirmwareTree) -> dict[str, Any]:
    """The controller path's stack from the build's call graphs, next to the stabilizer task's
    stack (its size from the ELF: the task's static stack buffer)."""
    fns = read_call_graphs([app_dir / "src", app_dir / "build"])
    policy = deepest_path(fns, POLICY_PATH_ROOT)
    controller = deepest_path(fns, CONTROLLER_ROOT)
    frames = {}
    for name in STABILIZER_FRAMES:
        hits = [f for t, f in fns.items() if f.name == name and t.split(":")[-1] == name]
        frames[name] = hits[0].frame if hits else None
    buffer = elf_symbol_sizes(elf, ("osSys_stabilizerTaskStackBuffer",)).get(
        "osSys_stabilizerTaskStackBuffer")
    report: dict[str, Any] = {
        "policy_path": policy,                # nf_cf_step and everything it calls
        "controller_path": controller,        # controllerOutOfTree: policy or stock PID
        "stabilizer_frames": frames,          # stabilizerTask -> controller() -> OOT
        "stabilizer_stack_bytes": buffer,
        "stabilizer_stack_definition": f"STABILIZER_TASK_STACKSIZE {tree.stabilizer_stack_definition} "
                                       f"words (src/config/config.h)",
        "context_save_bytes": CONTEXT_SAVE_BYTES,
    }
    if controller["bytes"] is not None and all(v is not None for v in frames.values()):
        worst = controller["bytes"] + sum(frames.values())
        report["stabilizer_task_worst_bytes"] = worst
        if buffer:
            report["free_bytes"] = buffer - worst
            report["free_bytes_after_context_save"] = buffer - worst - CONTEXT_SAVE_BYTES
    return report


# ---------------------------------------------------------------------------------------------

def build(crazyflie_base, policy, fmt: str, out, *, jobs: int | None = None, quiet: bool = False,
          progress: Callable[[str], None] | None = None, uart: str = "off") -> dict[str, Any]:
    """Check the tree and the model, write the app folder, run make; the summary dict (also
    written to OUT/nanofly-build.json). Raises BuildInputError / BuildFailed."""
    say = progress or (lambda msg: None)
    tree = check_firmware_tree(crazyflie_base)
    if fmt not in ("int8", "f32"):
        raise BuildInputError(f"--format {fmt}: choose int8 or f32")
    if uart not in DECK_UARTS:
        raise BuildInputError(f"--uart {uart}: choose {', '.join(DECK_UARTS)}")
    app_dir = check_app_dir(out)
    model = prepare_model(policy, fmt, app_dir, say)
    write_app(app_dir, tree, model, uart)
    say(f"firmware {tree.version} at {tree.base}; app folder {app_dir}")
    start = time.monotonic()
    output = run_make(app_dir, tree, jobs or _usable_cpus(), quiet=quiet)
    wall = time.monotonic() - start
    elf = app_dir / "build" / "cf2.elf"
    binary = app_dir / "build" / "cf2.bin"
    if not binary.is_file() or not elf.is_file():
        raise BuildFailed(f"make succeeded but wrote no {binary}; see {app_dir / LOG_FILE}")
    summary = {
        "app_dir": str(app_dir),
        "cf2_bin": str(binary),
        "elf": str(elf),
        "cf2_bin_bytes": binary.stat().st_size,
        "firmware": {"base": str(tree.base), "version": tree.version, "revision": tree.revision},
        "model": {"source": model.source, "export_dir": str(model.export_dir), "format": model.fmt,
                  "bytes": len(model.blob), "crc32": f"0x{model.crc32:08x}",
                  "layer_sizes": model.layer_sizes, "history_length": model.history_length,
                  "vehicle_preset": model.preset},
        "vehicle": model.vehicle,
        "deck_uart": uart,
        "sizes": parse_sizes(output),
        "app_objects": object_sizes(app_dir),
        "stack": stack_report(app_dir, elf, tree),
        "model_store": check_store_sectors(elf),
        "build_wall_s": round(wall, 1),
        "log": str(app_dir / LOG_FILE),
    }
    (app_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


"""The runtime on the target: cross-compile with arm-none-eabi-gcc (``ARM_CFLAGS``: Cortex-M4F,
hard float, -O2), check flash size and worst-case stack, and run a semihosting benchmark
firmware on QEMU netduinoplus2.

Instruction counts come from TIM2 under ``-icount shift=0`` (one count per executed instruction:
exact and repeatable, not cycles). The firmware (bench/mcu/) runs the float32 and int8 runtime
and the naive baseline (plain loops + newlib tanhf) on the same observations in the same run and
prints every action's bits, so the host runtime's outputs can be compared exactly.
"""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import blob as blobfmt
from .runtime import runtime_sources

ARM_CFLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2",
              "-ffunction-sections", "-fdata-sections", "-ffreestanding")
STRICT = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
LINK_NOSYS = ("-nostartfiles", "-Wl,--gc-sections", "--specs=nano.specs", "--specs=nosys.specs")
LINK_SEMIHOSTING = ("-DNANOFLY_SEMIHOSTING", "-nostartfiles", "-Wl,--gc-sections", "--specs=nano.specs",
                    "--specs=rdimon.specs")
FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "bench" / "mcu"
C_DIR = Path(__file__).resolve().parent / "c"


# Budgets of the target: the int8 weights, the runtime's code and its stack (bytes).
LIMIT_INT8_WEIGHTS = 16 * 1024
LIMIT_RUNTIME_CODE = 4 * 1024
LIMIT_STACK = 2 * 1024


class ToolMissing(RuntimeError):
    pass


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not found; install it (Debian: apt-get install -y "
                          f"--no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi "
                          f"qemu-system-arm)")
    return path


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 120) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"command failed ({res.returncode}): {' '.join(cmd)}\n"
                           f"{res.stdout[-2000:]}{res.stderr[-4000:]}")
    return res.stdout


def compile_objects(export_dir: Path, work: Path) -> dict[str, Path]:
    """Cross-compile the runtime's sources and both weight files with ``ARM_CFLAGS`` plus the
    strict warning set; returns the object files by name (the runtime's by their path relative
    to ``export_dir``, e.g. ``kernels/nf_dense_s8``). The runtime's objects come with GCC's
    stack usage and call graph (.ci beside each object)."""
    gcc = tool("arm-none-eabi-gcc")
    export_dir = Path(export_dir).resolve()  # the compiler runs in ``work``
    objs = {}
    runtime = [(src, True) for src in runtime_sources(export_dir)]
    weights = [(export_dir / f"{name}.c", False) for name in ("policy_f32", "policy_int8")]
    for src, is_runtime in [*runtime, *weights]:
        name = src.relative_to(export_dir).with_suffix("").as_posix()
        obj = work / f"{name.replace('/', '-')}.o"
        extra = ["-fstack-usage", "-fcallgraph-info=su"] if is_runtime else []
        _run([gcc, *ARM_CFLAGS, *STRICT, *extra, f"-I{export_dir}", "-c", str(src), "-o",
              str(obj)], cwd=work)
        objs[name] = obj
    return objs


def object_sizes(obj: Path) -> dict[str, int]:
    """Bytes of code, read-only data and RAM data of one object file (arm-none-eabi-size -A)."""
    out = _run([tool("arm-none-eabi-size"), "-A", str(obj)])
    sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        sec, n = parts[0], int(parts[1])
        for kind in sizes:
            if sec == f".{kind}" or sec.startswith(f".{kind}."):
                sizes[kind] += n
    sizes["flash"] = sizes["text"] + sizes["rodata"] + sizes["data"]
    return sizes


def _register_count(reglist: str) -> int:
    n = 0
    for part in reglist.replace(" ", "").split(","):
        if "-" in part:
            a, b = (int(re.sub(r"\D", "", r)) for r in part.split("-"))
            n += b - a + 1
        elif part:
            n += 1
    return n


def naked_stack_bytes(obj: Path) -> dict[str, int]:
    """Stack bytes of every function, read from its machine code (push/stmdb/vpush/sub sp).
    Used for the naked assembly kernels, which -fstack-usage reports as 0."""
    out = _run([tool("arm-none-eabi-objdump"), "-d", "--no-show-raw-insn", str(obj)])
    usage: dict[str, int] = {}
    fn = None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <([^>]+)>:", line)
        if m:
            fn = m.group(1)
            usage[fn] = 0
            continue
        if fn is None:
            continue
        m = re.search(r"\t(push|stmdb\s+sp!,|vpush)(?:\.w)?\s*\{([^}]*)\}", line)
        if m:
            usage[fn] += 4 * _register_count(m.group(2))
        m = re.search(r"\tsub(?:\.w|w)?\s+sp,\s*(?:sp,\s*)?#(\d+)", line)
        if m:
            usage[fn] += int(m.group(1))
    return usage


def worst_stack(ci_files, objs=()) -> dict[str, Any]:
    """Worst-case stack bytes of each runtime entry point from GCC's call graph (-fcallgraph-info)
    and -fstack-usage of the runtime's units (``ci_files``: one path or several; calls between
    units are joined by name); for the naked assembly kernels (reported as 0) the bytes come
    from the machine code of ``objs``. Functions outside the runtime (memset, memcmp) count as
    0 and are listed."""
    ci_files = [ci_files] if isinstance(ci_files, (str, Path)) else list(ci_files)
    objs = [objs] if isinstance(objs, (str, Path)) else list(objs)
    text = "\n".join(Path(ci).read_text() for ci in ci_files)
    asm: dict[str, int] = {}
    for obj in objs:
        asm.update(naked_stack_bytes(obj))
    own: dict[str, int] = {}
    qualifier: dict[str, str] = {}
    for title, label in re.findall(r'node: \{ title: "([^"]+)" label: "([^"]*)"', text):
        name = title.split(":")[-1]
        m = re.search(r"(\d+) bytes \((\w+)", label)
        if m:
            own[name] = int(m.group(1)) or asm.get(name, 0)
            qualifier[name] = m.group(2)
    edges: dict[str, set[str]] = {}
    for src, dst in re.findall(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"', text):
        edges.setdefault(src.split(":")[-1], set()).add(dst.split(":")[-1])
    external: set[str] = set()

    def depth(fn: str, seen: tuple[str, ...] = ()) -> int:
        if fn in seen:
            raise RuntimeError(f"recursion through {fn}: no static stack bound")
        if fn not in own:
            external.add(fn)
            return 0
        return own[fn] + max((depth(c, seen + (fn,)) for c in edges.get(fn, ())), default=0)

    entries = ("nanofly_policy_act", "nanofly_policy_act_batch", "nanofly_model_init",
               "nanofly_crc32")
    result = {e: depth(e) for e in entries if e in own}
    return {"entry_points": result, "worst": max(result.values()),
            "dynamic_or_bounded": sorted(n for n, q in qualifier.items() if q != "static"),
            "external_functions_counted_as_0": sorted(external)}


def size_and_stack_report(export_dir: Path) -> dict[str, Any]:
    """Compile, measure flash and worst-case stack, and link a minimal firmware (proves the
    runtime and both weight files link with ``ARM_CFLAGS``)."""
    export_dir = Path(export_dir)
    with tempfile.TemporaryDirectory(prefix="nanofly-arm-") as tmp:
        work = Path(tmp)
        objs = compile_objects(export_dir, work)
        sizes = {name: object_sizes(obj) for name, obj in objs.items()}
        runtime = [name for name in objs if not name.startswith("policy_")]
        stack = worst_stack([objs[name].with_suffix(".ci") for name in runtime],
                            [objs[name] for name in runtime])
        elf = link_firmware(export_dir, work, [FIRMWARE_DIR / "link_check.c"], LINK_NOSYS)
        linked = object_sizes(elf)
    runtime_sections = {k: sum(sizes[name][k] for name in runtime) for k in sizes[runtime[0]]}
    report = {
        "runtime_code_bytes": runtime_sections["flash"],
        "runtime_sections": runtime_sections,
        "runtime_ram_bytes": runtime_sections["data"] + runtime_sections["bss"],
        "int8_weights_bytes": sizes["policy_int8"]["flash"],
        "f32_weights_bytes": sizes["policy_f32"]["flash"],
        "stack": stack,
        "linked_firmware_flash_bytes": linked["flash"],
        "limits": {"int8_weights_bytes": LIMIT_INT8_WEIGHTS,
                   "runtime_code_bytes": LIMIT_RUNTIME_CODE, "stack_bytes": LIMIT_STACK},
    }
    report["within_limits"] = (report["int8_weights_bytes"] <= LIMIT_INT8_WEIGHTS
                               and report["runtime_code_bytes"] <= LIMIT_RUNTIME_CODE
                               and stack["worst"] <= LIMIT_STACK
                               and report["runtime_ram_bytes"] == 0)
    return report


def link_firmware(export_dir: Path, work: Path, sources: list[Path], link_flags,
                  extra_include: Path | None = None, name: str = "fw.elf") -> Path:
    gcc = tool("arm-none-eabi-gcc")
    if not (FIRMWARE_DIR / "mcu.ld").is_file():
        raise ToolMissing(f"{FIRMWARE_DIR}: the benchmark firmware sources (bench/mcu) are only "
                          f"in a source checkout of nanofly")
    export_dir = Path(export_dir).resolve()  # the compiler runs in ``work``
    srcs = [*sources, FIRMWARE_DIR / "startup.c", *runtime_sources(export_dir),
            export_dir / "policy_f32.c", export_dir / "policy_int8.c"]
    elf = work / name
    inc = [f"-I{export_dir}", f"-I{FIRMWARE_DIR}"] + ([f"-I{extra_include}"] if extra_include
                                                     else [])
    _run([gcc, *ARM_CFLAGS, *inc, *(str(s) for s in srcs), "-T", str(FIRMWARE_DIR / "mcu.ld"),
          *link_flags, "-o", str(elf), "-lm"], cwd=work)
    return elf


# ---------------------------------------------------------------------------------------------
# benchmark firmware

def _c_float(v: float) -> str:
    v = float(np.float32(v))
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return v.hex() + "f"


def write_bench_data(work: Path, obs: np.ndarray, f32_blob: bytes) -> None:
    """bench_data.h (observations) and baseline_weights.h (row-major float weights)."""
    obs = np.asarray(obs, np.float32)
    contents = blobfmt.read_blob(f32_blob)
    widths = contents.widths
    rows = ",\n".join("  {" + ", ".join(_c_float(v) for v in row) + "}" for row in obs)
    (work / "bench_data.h").write_text(
        f"#define BENCH_NUM_OBS {len(obs)}u\n#define BENCH_IN {widths[0]}\n"
        f"#define BENCH_OUT {widths[-1]}\n"
        f"static const float bench_obs[{len(obs)}][{widths[0]}] = {{\n{rows}\n}};\n")
    parts = [f"#define BL_LAYERS {len(widths) - 1}",
             f"#define BL_MAX_WIDTH {max(widths[1:])}",
             f"static const int bl_widths[] = {{{', '.join(map(str, widths))}}};"]
    for i, (w, b) in enumerate(zip(contents.weights, contents.biases)):
        parts.append(f"static const float bl_w{i}[] = {{{', '.join(_c_float(v) for v in w.ravel())}}};")
        parts.append(f"static const float bl_b{i}[] = {{{', '.join(_c_float(v) for v in b)}}};")
    n = len(widths) - 1
    parts.append(f"static const float *const bl_weights[] = {{{', '.join(f'bl_w{i}' for i in range(n))}}};")
    parts.append(f"static const float *const bl_biases[] = {{{', '.join(f'bl_b{i}' for i in range(n))}}};")
    (work / "baseline_weights.h").write_text("\n".join(parts) + "\n")


def run_qemu(elf: Path, timeout: float = 120) -> str:
    """Run a semihosting firmware; returns its stdout. QEMU is killed on timeout."""
    cmd = [tool("qemu-system-arm"), "-M", "netduinoplus2", "-display", "none", "-monitor", "none",
           "-serial", "none", "-icount", "shift=0", "-semihosting-config",
           "enable=on,target=native", "-kernel", str(elf)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"firmware exited with status {res.returncode}:\n{res.stdout[-3000:]}"
                           f"{res.stderr[-2000:]}")
    return res.stdout


def parse_bench_output(text: str, out_dim: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[int, np.ndarray]]] = {}
    result: dict[str, Any] = {"init": {}, "stack_measured": {}}
    for line in text.splitlines():
        p = line.split()
        if not p:
            continue
        if p[0] == "RUN":
            bits = np.array([int(h, 16) for h in p[4:4 + out_dim]], np.uint32)
            runs.setdefault(p[1], []).append((int(p[3]), bits.view(np.float32)))
        elif p[0] == "INIT":
            result["init"][p[1]] = {"rc": int(p[2]), "instructions": int(p[3])}
        elif p[0] == "TANH":
            result["tanh_instructions_per_call"] = {"nanofly": int(p[1]) / int(p[3]),
                                                    "newlib_tanhf": int(p[2]) / int(p[3])}
        elif p[0] == "STACK":
            result["stack_measured"][p[1]] = int(p[2])
        elif p[0] == "OVERHEAD":
            result["timer_overhead"] = int(p[1])
    if "DONE" not in text:
        raise RuntimeError(f"benchmark firmware did not finish:\n{text[-2000:]}")
    for kind, rows in runs.items():
        counts = [c for c, _ in rows]
        result[kind] = {"instructions": counts, "actions": np.stack([a for _, a in rows])}
    return result


def run_benchmark(export_dir: Path, obs: np.ndarray, timeout: float = 120) -> dict[str, Any]:
    """Build the benchmark firmware for ``export_dir`` with ``obs`` (a few rows) and run it."""
    export_dir = Path(export_dir)
    f32_blob = (export_dir / "policy_f32.bin").read_bytes()
    with tempfile.TemporaryDirectory(prefix="nanofly-bench-") as tmp:
        work = Path(tmp)
        write_bench_data(work, obs, f32_blob)
        elf = link_firmware(export_dir, work,
                            [FIRMWARE_DIR / "bench_main.c", FIRMWARE_DIR / "baseline.c"],
                            LINK_SEMIHOSTING, extra_include=work, name="bench.elf")
        text = run_qemu(elf, timeout)
    return parse_bench_output(text, blobfmt.read_blob(f32_blob).widths[-1])


def _stress_rows(obs: np.ndarray) -> np.ndarray:
    """Rows that exercise saturation paths: huge values and a NaN."""
    big = np.full_like(obs[:1], 1e6)
    big[0, ::2] = -1e6
    nan = obs[:1].copy()
    nan[0, 0] = np.nan
    return np.concatenate([big, nan])


def mcu_figures(export_dir, obs: np.ndarray | None = None, *, seed: int = 0) -> dict[str, Any]:
    """Flash, stack and instructions per inference of an export directory on the target, and
    whether the firmware's actions equal the host C runtime's bit for bit."""
    from .runtime import CModel
    export_dir = Path(export_dir)
    report = size_and_stack_report(export_dir)
    f32_blob = (export_dir / "policy_f32.bin").read_bytes()
    int8_blob = (export_dir / "policy_int8.bin").read_bytes()
    source = "given"
    if obs is None:
        from .calibration import synthetic_observations
        dim = CModel(f32_blob).input_dim
        obs, source = synthetic_observations(6, dim, seed), "synthetic"
    rows = np.concatenate([obs, _stress_rows(obs)]).astype(np.float32)
    run = run_benchmark(export_dir, rows)
    equal = {}
    for tag, blob in (("f32", f32_blob), ("int8", int8_blob)):
        host = CModel(blob)(rows)
        target = run[tag]["actions"]
        same = (host.view(np.uint32) == target.view(np.uint32)) | (np.isnan(host) & np.isnan(target))
        equal[tag] = bool(same.all())
    counts = {k: int(statistics.median(run[k]["instructions"][:len(obs)]))
              for k in ("f32", "int8", "baseline")}
    return {
        "instructions_per_inference": counts,
        "instructions_spread": {k: [min(run[k]["instructions"]), max(run[k]["instructions"])]
                                for k in ("f32", "int8", "baseline")},
        "speedup_vs_baseline_same_run": {k: round(counts["baseline"] / counts[k], 2)
                                         for k in ("f32", "int8")},
        "init_instructions": {k: v["instructions"] for k, v in run["init"].items()},
        "tanh_instructions_per_call": run["tanh_instructions_per_call"],
        "stack_measured_bytes": run["stack_measured"],
        "target_equals_host_bitwise": equal,
        "size_and_stack": report,
        "observations": int(len(rows)),
        "observations_source": f"{source} + 2 stress rows (+-1e6, NaN)",
    }

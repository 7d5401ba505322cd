"""One Crazyflie controller step on the emulated chip: instructions of ``nf_cf_step`` (the
observation from the firmware's structs, the int8 inference, the force mapping) next to the
1 kHz stabilizer period.

The benchmark firmware (bench/mcu/cf_step_main.c) links the app's controller
(crazyflie/src/nanofly_cf.c), the policy runtime (export/c) and the policy's int8 blob, compiled
with arm-none-eabi-gcc and the firmware's own code-generation flags (``-Os``, Cortex-M4F,
``-fno-math-errno``) against the firmware tree's headers and its default configuration
(``THRUST_MAX``, the stabilizer task's stack size come from them), with the runtime's buffers
sized to the model as in the app. It runs on QEMU netduinoplus2 with ``-icount shift=0``, where
TIM2 counts one per executed instruction (export/mcu.py). The state estimates are simulator
states of the hover MDP's initial distribution in the firmware's units; the forces the chip
computes are compared with the host SITL's for the same inputs.

Counts are instructions, not cycles: the real STM32F405 at 168 MHz takes at least one cycle per
instruction (more for loads from flash with wait states, multi-cycle FPU and branch
instructions), so ``instructions / 168 000`` is a lower bound of the fraction of the 1 ms
stabilizer period.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nanofly.export import backends, mcu
from nanofly.export.runtime import C_DIR, runtime_sources

from . import crazyflie_sitl as sitl
from . import crazyflie_tree as tree
from .crazyflie_vehicle import controller_vehicle, training_mdp, vehicle_params

CORE_HZ = 168_000_000  # STM32F405 on the Crazyflie 2.x
STABILIZER_HZ = 1000
MAIN_C = mcu.FIRMWARE_DIR / "cf_step_main.c"
# the firmware's code generation (its Makefile's ARCH_CFLAGS and -Os) plus section GC
FIRMWARE_CFLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                   "-fno-math-errno", "-Os", "-ffunction-sections", "-fdata-sections")
FREERTOS_INCLUDE_DIRS = ("vendor/FreeRTOS/include", "vendor/FreeRTOS/portable/GCC/ARM_CM4F")


def _c_float(v: float) -> str:
    return float(np.float32(v)).hex() + "f"


def runtime_buffer_limits(layer_sizes: list[int]) -> tuple[int, int]:
    """(NANOFLY_MAX_INPUT, NANOFLY_MAX_WIDTH) sized to the model, as the app compiles them."""
    from .crazyflie_build import runtime_limits

    return runtime_limits(list(layer_sizes))


def write_data_header(path: Path, vehicle: dict[str, Any], state: np.ndarray,
                      setpoint: np.ndarray) -> None:
    rows = lambda a: ",\n".join("  {" + ", ".join(_c_float(v) for v in r) + "}" for r in a)  # noqa: E731
    k = vehicle["thrust_coefficients"]
    path.write_text(
        f'#include "nanofly_cf.h"\n'
        f"#define CF_STEP_NUM_STATES {len(state)}u\n"
        f"#define CF_STEP_PERIOD {STABILIZER_HZ // vehicle['policy_rate_hz']}u\n"
        f"static const nf_cf_vehicle cf_step_vehicle = {{\n"
        f"  .rotor_speed_min = {_c_float(vehicle['rotor_speed_min'])},\n"
        f"  .rotor_speed_max = {_c_float(vehicle['rotor_speed_max'])},\n"
        f"  .thrust_coefficients = {{{', '.join(_c_float(c) for c in k)}}},\n"
        f"  .history_reset_action = {_c_float(vehicle['history_reset_action'])},\n"
        f"  .position_error_limit_m = {_c_float(vehicle['position_error_limit_m'])},\n"
        f"  .policy_rate_hz = {int(vehicle['policy_rate_hz'])}u,\n}};\n"
        f"static const float cf_step_state[{len(state)}][13] = {{\n{rows(state)}\n}};\n"
        f"static const float cf_step_setpoint[{len(state)}][6] = {{\n{rows(setpoint)}\n}};\n")


def sample_inputs(manifest: dict[str, Any], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` state estimates and setpoints (firmware units) from the hover MDP's initial
    states around random targets, without observation noise."""
    from nanofly.sim.env import VecEnv

    mdp = training_mdp(manifest)
    env = VecEnv(n, vehicle_params(manifest), seed=seed, config=mdp, observation_noise=False)
    rng = np.random.default_rng(seed)
    env.target_position[:] = rng.uniform(-1, 1, (n, 3))
    env.target_position[:, 2] += 1.0
    env.target_velocity[:] = rng.uniform(-0.5, 0.5, (n, 3))
    obs, _ = env.reset()
    return sitl.firmware_inputs(obs, env.target_position, env.target_velocity)


def parse_output(text: str) -> dict[str, Any]:
    if "DONE" not in text:
        raise RuntimeError(f"the controller benchmark firmware did not finish:\n{text[-2000:]}")
    out: dict[str, Any] = {"policy": [], "hold": [], "forces": []}
    for line in text.splitlines():
        p = line.split()
        if not p:
            continue
        if p[0] == "POLICY":
            out["policy"].append(int(p[2]))
            out.setdefault("status", []).append(int(p[3]))
            out["forces"].append(np.array([int(h, 16) for h in p[4:8]], np.uint32)
                                 .view(np.float32))
        elif p[0] == "HOLD":
            out["hold"].append(int(p[2]))
        elif p[0] == "INIT":
            out["init_rc"], out["init_instructions"] = int(p[1]), int(p[2])
        elif p[0] == "STACK":
            out["stack_bytes"] = int(p[1])
        elif p[0] == "STABILIZER_STACK_WORDS":
            out["stabilizer_stack_words"] = int(p[1])
        elif p[0] == "THRUST_MAX":
            out["thrust_max_n"] = float(np.array([int(p[1], 16)], np.uint32).view(np.float32)[0])
    out["forces"] = np.stack(out["forces"]) if out["forces"] else np.zeros((0, 4), np.float32)
    return out


def run_step_benchmark(policy, *, base=None, num_states: int = 8, seed: int = 0,
                       timeout: float = 180) -> dict[str, Any]:
    """Build and run the benchmark firmware for ``policy`` (a policy.pt, exported on the fly, or
    an export directory) against the firmware tree ``base`` (default: ``locate_tree()``);
    returns the figures (see the module docstring)."""
    base = sitl.firmware_tree(base)
    export_dir = backends.export_dir_for(Path(policy))
    manifest = json.loads((export_dir / "manifest.json").read_text())
    vehicle = controller_vehicle(manifest)
    state, setpoint = sample_inputs(manifest, num_states, seed)
    max_input, max_width = runtime_buffer_limits(manifest["layer_sizes"])
    autoconf = tree.default_autoconf(base)
    includes = [autoconf, *(base / d for d in tree.TYPE_INCLUDE_DIRS),
                *(base / d for d in sitl.EXTRA_INCLUDE_DIRS),
                *(base / d for d in FREERTOS_INCLUDE_DIRS), C_DIR, sitl.CONTROLLER_H.parent,
                export_dir, mcu.FIRMWARE_DIR, sitl.SHIM_C.parent]
    with tempfile.TemporaryDirectory(prefix="nanofly-cf-step-") as tmp:
        work = Path(tmp)
        write_data_header(work / "cf_step_data.h", vehicle, state, setpoint)
        elf = work / "cf_step.elf"
        sources = [MAIN_C, mcu.FIRMWARE_DIR / "startup.c", sitl.CONTROLLER_C, *runtime_sources(),
                   export_dir / "policy_int8.c"]
        mcu._run([mcu.tool("arm-none-eabi-gcc"), *FIRMWARE_CFLAGS, "-Wall", "-Wextra", "-Werror",
                  f"-DNANOFLY_MAX_INPUT={max_input}u", f"-DNANOFLY_MAX_WIDTH={max_width}u",
                  f"-I{work}", *(f"-I{d}" for d in includes), *(str(s) for s in sources),
                  "-T", str(mcu.FIRMWARE_DIR / "mcu.ld"), *mcu.LINK_SEMIHOSTING, "-o", str(elf),
                  "-lm"], cwd=work)
        text = mcu.run_qemu(elf, timeout)
    got = parse_output(text)
    if got.get("init_rc") != 0:
        raise RuntimeError(f"the controller refused the model on the chip (rc {got.get('init_rc')})")
    # the same inputs through the host SITL (same sources, host compiler)
    lib = sitl.SitlLibrary.get(base)
    bank = sitl.ControllerBank(lib, 1, vehicle, (export_dir / "policy_int8.bin").read_bytes())
    period = STABILIZER_HZ // vehicle["policy_rate_hz"]
    host = np.stack([bank.run(state[k:k + 1], setpoint[k:k + 1], 1000 + period * k,
                              1000 + period * k, 1)["forces"][0, 0] for k in range(num_states)])
    counts = np.array(got["policy"])
    period_instructions = CORE_HZ // STABILIZER_HZ
    return {
        "what": "instructions of one nf_cf_step on the emulated Cortex-M4 (QEMU netduinoplus2, "
                "-icount shift=0, TIM2): observation + int8 inference + force mapping",
        "policy": str(policy), "layer_sizes": manifest["layer_sizes"],
        "crazyflie_base": str(base),
        "instructions_policy_step": {"median": int(np.median(counts)), "min": int(counts.min()),
                                     "max": int(counts.max()), "all": counts.tolist()},
        "instructions_held_step_max": int(max(got["hold"])),
        "instructions_init_and_load": got["init_instructions"],
        "stabilizer_period_instructions_at_168mhz": period_instructions,
        "policy_step_fraction_of_stabilizer_period_lower_bound": round(
            float(np.median(counts)) / period_instructions, 4),
        "policy_period_steps": period,
        "measured_stack_bytes_policy_step": got["stack_bytes"],
        "stabilizer_task_stack_bytes": 4 * got["stabilizer_stack_words"],
        "thrust_max_n": got["thrust_max_n"],
        "all_flying": all(s == sitl.FLYING for s in got["status"]),
        "max_force_difference_vs_host_sitl": float(np.abs(got["forces"] - host).max()),
        "cflags": list(FIRMWARE_CFLAGS),
        "runtime_buffers": {"NANOFLY_MAX_INPUT": max_input, "NANOFLY_MAX_WIDTH": max_width},
    }

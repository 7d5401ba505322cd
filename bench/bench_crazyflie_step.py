"""Crazyflie controller step on the emulated chip: prints one JSON object.

Instructions of one ``nf_cf_step`` (observation from the firmware's structs + int8 inference +
force mapping) on QEMU netduinoplus2 with -icount shift=0, built with the firmware's flags
against its headers ($CRAZYFLIE_BASE, or ../shared's tarball), next to the 1 ms stabilizer
period at 168 MHz; the held steps between policy steps, the measured stack of a policy step and
the stabilizer task's stack, and the forces checked against the host SITL
(nanofly.firmware_bridge.crazyflie_mcu).

    python bench/bench_crazyflie_step.py [--policy models/crazyflie_hover_int8/policy.pt]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nanofly.firmware_bridge.crazyflie_mcu import run_step_benchmark

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "models" / "crazyflie_hover_int8" / "policy.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default=str(DEFAULT_POLICY), help="policy.pt or export directory")
    ap.add_argument("--num-states", type=int, default=8, help="state estimates to step through")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(run_step_benchmark(args.policy, num_states=args.num_states, seed=args.seed),
                     indent=2))


if __name__ == "__main__":
    main()

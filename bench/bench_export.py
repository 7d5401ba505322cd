"""Export stage benchmark: prints one JSON object.

Instructions per inference of the float32 and int8 C runtime and of the naive baseline (plain
loops over row-major float weights + newlib tanhf, -O2) on QEMU netduinoplus2 with -icount
shift=0, all built and run in the same invocation; flash and worst-case stack from
arm-none-eabi-size / -fstack-usage; host backend throughput (onnx, c-f32, c-int8 against torch).

    python bench/bench_export.py [--policy POLICY_OR_EXPORT_DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import json

from nanofly.export.bench import run_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="policy.pt or export dir (default: random 146-64-64-4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(run_bench(args.policy, args.seed), indent=2))


if __name__ == "__main__":
    main()

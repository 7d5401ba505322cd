"""Serial bridge benchmark on the emulated STM32F405 (QEMU): prints one JSON object.

    python bench/bench_bridge.py [--repeats 3] [--infer-steps 200] [--seed 0] [--policy policy.pt]

Upload: bytes on the wire per model byte (both directions and host->board only), the upload's
wall time through QEMU, and its projected time on a real 115 200-baud UART; the baseline is the
same upload in 128-byte chunks, in the same run. INFER: round trip per step and instructions
per inference (TIM5 under -icount shift=0); the baseline is an empty HEARTBEAT round trip.
INFER_STATE (state part only, action history kept on board): per-step round trip with 1, 8
and 27 rows per frame, and its speed-up over the full INFER per step measured in the same run.
Same as `nanofly bench bridge --json`.
"""
import argparse
import json

from nanofly.firmware_bridge.benchmark import run_bridge_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--infer-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default=None, help="policy.pt (default: a seeded random actor)")
    args = ap.parse_args()
    print(json.dumps(run_bridge_bench(args.policy, repeats=args.repeats,
                                      infer_steps=args.infer_steps, seed=args.seed)))

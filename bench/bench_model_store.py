"""Power cuts during a model upload into the persistent two-slot store: prints one JSON object.

The shared protocol core (firmware_bridge/core) runs on the host over the file-backed NOR-flash
emulator. Starting each time from a flash image with the old model active (the float32 export
of the policy), a whole upload of the new one (its int8 export) is cut after each single
erase/program operation and at a spread of byte counts inside each operation (a torn write);
then the board boots. Counted: cuts, boots with the old / the new / no / a torn or unverified
model (the active model must be byte for byte the old or the new blob). Every tenth cut is
followed by a new upload that must succeed.

    python bench/bench_model_store.py --json [--policy models/crazyflie_hover_int8/policy.pt]
        [--chunk 2044] [--tears-per-op 48]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.power_cut import hover_int8_blobs, run_power_cut_bench

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "models" / "crazyflie_hover_int8" / "policy.pt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the JSON object only (the default "
                    "also prints it, after a one-line summary on stderr)")
    ap.add_argument("--policy", default=str(DEFAULT_POLICY), help="policy.pt or export directory")
    ap.add_argument("--chunk", type=int, default=2044, help="CHUNK data bytes (the host's default)")
    ap.add_argument("--tears-per-op", type=int, default=48,
                    help="byte counts to cut at inside each long erase/program operation")
    args = ap.parse_args()
    policy = Path(args.policy)
    if not policy.exists():
        print(f"error: --policy {policy}: no such file or directory", file=sys.stderr)
        return 2
    if not 1 <= args.chunk <= P.MAX_PAYLOAD - 4 or args.tears_per_op < 1:
        print(f"error: --chunk must be 1..{P.MAX_PAYLOAD - 4} and --tears-per-op >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nanofly_bench_store_") as tmp:
        new_blob, old_blob = hover_int8_blobs(policy, tmp)
        result = run_power_cut_bench(old_blob, P.FORMAT_F32, new_blob, P.FORMAT_INT8,
                                     chunk=args.chunk, tears_per_op=args.tears_per_op, work_dir=tmp)
    result["policy"] = str(policy)
    if not args.json:
        print(f"{result['cuts']} cuts, {result['boots_old_or_new']} boots with the old or new "
              f"model, {result['boots_torn_or_unverified']} torn/unverified, "
              f"{result['boots_no_model']} without a model", file=sys.stderr)
    print(json.dumps(result, indent=2))
    ok = result["boots_torn_or_unverified"] == 0 and result["boots_no_model"] == 0 \
        and result["uploads_after_cut_failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

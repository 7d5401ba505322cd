"""Processor in the loop over the hover suite: the shipped model's int8 export on the emulated
STM32F405 (`nanofly eval EXPORT --backend pil:emulate`) against the host int8 C runtime
(`--backend c-int8`, the baseline) on the same export, episodes and seeds. Prints one JSON
object: each backend's wall time and suite figures, whether every figure is equal to the last
bit, and the board's instructions and round trip per inference.

    python bench/bench_pil_suite.py [--policy models/crazyflie_hover/policy.pt] [--episodes 50]

tests/test_pil_suite.py checks the same equality on 4 episodes.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "crazyflie_hover" / "policy.pt"


def _nanofly(*argv: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "nanofly", *argv], capture_output=True, text=True)
    return out, time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=str(SHIPPED), help="policy.pt (default: the shipped model)")
    ap.add_argument("--episodes", type=int, default=50, help="hover-suite episodes (default 50)")
    args = ap.parse_args()
    if args.episodes < 1:
        print("error: --episodes must be >= 1", file=sys.stderr)
        return 2
    if not Path(args.policy).is_file():
        print(f"error: {args.policy}: policy file not found", file=sys.stderr)
        return 2
    result = {"policy": args.policy, "episodes": args.episodes, "steps_per_episode": 500,
              "device": "QEMU netduinoplus2 (emulated STM32F405), UART on a local TCP socket",
              "backends": {}}
    with tempfile.TemporaryDirectory(prefix="nanofly-bench-pil-") as tmp:
        export_dir = Path(tmp) / "export"
        out, _ = _nanofly("export", args.policy, "--out", str(export_dir), "--json")
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        for backend in ("c-int8", "pil:emulate"):
            out, wall_s = _nanofly("eval", str(export_dir), "--suite", "hover", "--episodes",
                                   str(args.episodes), "--backend", backend, "--json")
            if out.returncode not in (0, 1):
                print(out.stderr, file=sys.stderr)
                return 1
            run = json.loads(out.stdout)
            result["backends"][backend] = {"wall_s": round(wall_s, 1),
                                           "hover": run["suites"]["hover"],
                                           "backend_info": run.get("backend_info")}
    host, pil = ({k: v for k, v in result["backends"][b]["hover"].items() if k != "wall_time_s"}
                 for b in ("c-int8", "pil:emulate"))
    info = result["backends"]["pil:emulate"]["backend_info"]
    result["pil_equals_c_int8_every_figure"] = host == pil
    result["pil_to_c_int8_wall_time_ratio"] = round(
        result["backends"]["pil:emulate"]["wall_s"] / result["backends"]["c-int8"]["wall_s"], 1)
    result["pil_inferences"] = info["steps"]
    result["pil_instructions_per_inference_median"] = info["instructions_per_inference"]["median"]
    result["pil_round_trip_s_median"] = info["round_trip_s"]["median"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

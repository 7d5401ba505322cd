"""Model upload over a clean and a damaged serial link, in the same run and to the same
emulated board (the bridge firmware on QEMU netduinoplus2; its UART is a TCP socket). Prints
one JSON object.

    python bench/bench_upload_link.py [--policy models/crazyflie_hover_int8/policy.pt]
        [--repeats 3] [--damage 0.005] [--seed 0] [--timeout 1.0] [--retries 3]

The damaged link is a TCP proxy (nanofly.firmware_bridge.faultproxy.Damage) that damages each
byte with probability --damage in both directions: flipped in one bit, dropped or sent twice,
equally likely; each damaged upload gets its own seeds (seed + 2 i, seed + 2 i + 1). For the
int8 and float32 exports of the policy: wall time, bytes on the wire (both directions, and host
to board only) per model byte, and what the adaptive chunk size did; the ratio of the damaged
to the clean upload time. --timeout and --retries are the client's (`nanofly flash`'s defaults).
Wall times are QEMU's: its UART takes in 15-50 KB/s, slower than the host's TCP and faster
than a 115 200-baud UART (11.5 KB/s).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.client import BridgeClient, LinkError, read_export_blob, upload_model
from nanofly.firmware_bridge.emulator import EmulatedBoard
from nanofly.firmware_bridge.faultproxy import Damage, FaultProxy
from nanofly.firmware_bridge.firmware import build_firmware

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' helpers
from helpers import bridge as T  # noqa: E402

SHIPPED_INT8 = T.HOVER_POLICY.parents[1] / "crazyflie_hover_int8" / "policy.pt"


def summarize(results, errors, model_bytes: int) -> dict:
    out = {"uploads": len(results) + len(errors), "completed": len(results), "errors": errors}
    if not results:
        return out
    walls = [r.wall_s for r in results]
    wire = [r.bytes_on_wire / model_bytes for r in results]
    to_board = [r.bytes_to_board / model_bytes for r in results]
    means = [r.chunking["chunk_bytes_mean"] for r in results if r.chunking["chunk_bytes_mean"]]
    out.update({
        "wall_s_median": statistics.median(walls), "wall_s_all": walls,
        "wire_bytes_per_model_byte_median": statistics.median(wire),
        "wire_bytes_per_model_byte_all": wire,
        "to_board_bytes_per_model_byte_median": statistics.median(to_board),
        "chunk_bytes_max": results[0].chunk_bytes,
        "chunk_bytes_mean_all": means,
        "chunk_bytes_smallest_used": min(r.chunking["chunk_bytes_smallest_used"] for r in results),
        "chunks_lost_all": [r.chunking["chunks_lost"] for r in results],
        "chunks_ok_all": [r.chunking["chunks_ok"] for r in results],
        "retries_all": [r.retries for r in results],
        "reconnects_all": [r.reconnects for r in results],
    })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=str(SHIPPED_INT8), help="policy.pt to export (default: the shipped int8 policy)")
    ap.add_argument("--repeats", type=int, default=3, help="uploads per format and link (default 3)")
    ap.add_argument("--damage", type=float, default=0.005, help="probability that a byte is damaged (default 0.005)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1.0, help="client reply timeout, s (default 1.0)")
    ap.add_argument("--retries", type=int, default=3, help="client retries (default 3)")
    ap.add_argument("--formats", nargs="+", default=["int8", "f32"], choices=["int8", "f32"])
    args = ap.parse_args()
    if args.repeats < 1 or not 0.0 <= args.damage < 1.0:
        print("error: --repeats must be >= 1 and --damage in [0, 1)", file=sys.stderr)
        return 2
    if not Path(args.policy).is_file():
        print(f"error: {args.policy}: policy file not found", file=sys.stderr)
        return 2
    started = time.monotonic()
    out = {"device": "QEMU netduinoplus2 (emulated STM32F405), UART on a local TCP socket",
           "policy": args.policy, "damage_per_byte": args.damage, "damage_kinds": list(Damage.KINDS),
           "seed": args.seed, "repeats": args.repeats, "client_timeout_s": args.timeout,
           "client_retries": args.retries, "formats": {}}
    with tempfile.TemporaryDirectory(prefix="nanofly-bench-upload-link-") as tmp:
        export_dir = T.export(args.policy, Path(tmp) / "export", seed=args.seed)
        with EmulatedBoard(build_firmware(), lifetime_s=3600) as board:
            model_id = 1
            for fmt in args.formats:
                blob, _ = read_export_blob(export_dir, fmt)
                crc = P.model_crc(blob)
                clean, damaged, damaged_errors, damage_counts, verified = [], [], [], [], []
                for i in range(args.repeats):
                    with BridgeClient(board.url, timeout_s=args.timeout, retries=args.retries) as c:
                        clean.append(upload_model(c, blob, fmt, model_id=model_id))
                    model_id += 1
                for i in range(args.repeats):
                    to_board = Damage(args.damage, seed=args.seed + 2 * i)
                    to_host = Damage(args.damage, seed=args.seed + 2 * i + 1)
                    completed = False
                    with FaultProxy(board.port, to_board=[to_board], to_host=[to_host]) as proxy:
                        try:
                            with BridgeClient(proxy.url, timeout_s=args.timeout, retries=args.retries) as c:
                                damaged.append(upload_model(c, blob, fmt, model_id=model_id))
                                completed = True
                        except LinkError as exc:
                            damaged_errors.append(str(exc))
                    damage_counts.append({"to_board": dict(to_board.counts), "to_host": dict(to_host.counts),
                                          "bytes_to_board": proxy.bytes_to_board,
                                          "bytes_to_host": proxy.bytes_to_host})
                    if completed:  # checked over the clean link: this upload's CRC and id active
                        with BridgeClient(board.url, timeout_s=1.0) as c:
                            status = c.status()
                        verified.append(status.active_crc == crc and status.active_model_id == model_id)
                    model_id += 1
                c_sum = summarize(clean, [], len(blob))
                d_sum = summarize(damaged, damaged_errors, len(blob))
                d_sum["damage_counts"] = damage_counts
                d_sum["completed_and_active_with_their_crc_and_id"] = sum(verified)
                entry = {"model_bytes": len(blob), "crc_hex": f"0x{crc:08x}", "clean": c_sum,
                         "damaged": d_sum}
                if damaged:
                    entry["damaged_over_clean_wall_time"] = d_sum["wall_s_median"] / c_sum["wall_s_median"]
                out["formats"][fmt] = entry
    out["bench_wall_s"] = time.monotonic() - started
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

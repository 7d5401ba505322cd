"""Serial bridge benchmark on the emulated STM32F405 (QEMU): prints one JSON object.

    python bench/bench_bridge.py [--repeats 3] [--infer-steps 200] [--seed 0] [--policy policy.pt]

Upload: bytes on the wire per model byte (both directions and host->board only), the upload's
wall time through QEMU, and its projected time on a real 115 200-baud UART; the baseline is the
same upload in 128-byte chunks, in the same run. INFER: round trip per step and instructions
per inference (TIM5 under -icount shift=0); the baseline is an empty HEARTBEAT round trip.
INFER_STATE (state part only, action history kept on board): per-step round trip with 1, 8
and 27 rows per frame, and its speed-up over the full INFER per step measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.client import BridgeClient, read_export_blob, upload_model
from nanofly.firmware_bridge.emulator import EmulatedBoard
from nanofly.firmware_bridge.firmware import build_firmware, firmware_size
from nanofly.policy.observation import OBSERVATION_DIM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' helpers
from helpers import bridge as T  # noqa: E402

BAUD = 115_200
BITS_PER_BYTE = 10  # 8N1


def _stop_and_wait_seconds(model_bytes: int, chunk: int, baud: int = BAUD) -> float:
    """Upload time over a real UART at ``baud``: each CHUNK frame, then its reply (the host
    waits for it), plus HELLO/BEGIN/COMMIT/ACTIVATE/STATUS; MCU processing time ignored."""
    n = 0
    for offset in range(0, model_bytes, chunk):
        n += P.wire_bytes(4 + min(chunk, model_bytes - offset)) + P.wire_bytes(4)
    n += sum(P.wire_bytes(a) + P.wire_bytes(b) for a, b in ((4, 44), (16, 8), (0, 12), (4, 12), (0, 100)))
    return n * BITS_PER_BYTE / baud


def _upload_stats(results, model_bytes: int) -> dict:
    walls = [r.wall_s for r in results]
    r0 = results[0]
    return {
        "model_bytes": model_bytes,
        "chunk_bytes": r0.chunk_bytes,
        "wire_bytes_both_directions": r0.bytes_on_wire,
        "wire_bytes_to_board": r0.bytes_to_board,
        "overhead_both_directions": r0.bytes_on_wire / model_bytes,
        "overhead_to_board": r0.bytes_to_board / model_bytes,
        "line_rate_fraction_full_duplex": model_bytes / r0.bytes_to_board,
        "line_rate_fraction_half_duplex": model_bytes / r0.bytes_on_wire,
        "projected_s_at_115200_baud": _stop_and_wait_seconds(model_bytes, r0.chunk_bytes),
        "qemu_wall_s_median": statistics.median(walls),
        "qemu_wall_s_all": walls,
        "qemu_rate_kib_s": model_bytes / statistics.median(walls) / 1024,
        "retries": sum(r.retries for r in results),
    }


def run_bridge_bench(policy: str | None = None, *, repeats: int = 3, infer_steps: int = 200,
                     seed: int = 0, baseline_chunk: int = 128) -> dict:

    with tempfile.TemporaryDirectory(prefix="nanofly-bench-bridge-") as tmp:
        tmp = Path(tmp)
        policy = Path(policy) if policy else T.random_policy(tmp / "actor.pt", seed=seed)
        export_dir = T.export(policy, tmp / "export", seed=seed)
        elf = build_firmware()
        obs = T.observations(infer_steps, seed=seed + 1)
        out: dict = {
            "device": "QEMU 7.2 netduinoplus2 (emulated STM32F405, -icount shift=0)",
            "policy": str(policy), "seed": seed, "repeats": repeats,
            "firmware": firmware_size(elf), "upload": {}, "infer": {},
        }
        with EmulatedBoard(elf, lifetime_s=1800) as board, BridgeClient(board.url, timeout_s=5.0) as c:
            for fmt in ("f32", "int8"):  # int8 last: it stays active for the INFER runs
                blob, _ = read_export_blob(export_dir, fmt)
                big = [upload_model(c, blob, fmt, model_id=1000 + i) for i in range(repeats)]
                small = [upload_model(c, blob, fmt, model_id=2000 + i, chunk_bytes=baseline_chunk)
                         for i in range(repeats)]
                stats = _upload_stats(big, len(blob))
                base = _upload_stats(small, len(blob))
                stats["baseline_128_byte_chunks"] = base
                stats["qemu_speedup_vs_baseline"] = base["qemu_wall_s_median"] / stats["qemu_wall_s_median"]
                stats["projected_speedup_vs_baseline_at_115200"] = (
                    base["projected_s_at_115200_baud"] / stats["projected_s_at_115200_baud"])
                out["upload"][fmt] = stats
                if fmt == "f32":
                    ticks = [c.infer(row)[1] for row in obs[:20]]
                    out["infer"]["f32_instructions_per_inference"] = int(np.median(ticks))

            rtt, ticks = [], []
            for row in obs:
                t0 = time.perf_counter()
                _, tk, _ = c.infer(row)
                rtt.append(time.perf_counter() - t0)
                ticks.append(tk)
            hb = []
            for _ in range(infer_steps):
                t0 = time.perf_counter()
                c.heartbeat()
                hb.append(time.perf_counter() - t0)
            out["infer"].update({
                "int8_instructions_per_inference": int(np.median(ticks)),
                "int8_instructions_min_max": [int(min(ticks)), int(max(ticks))],
                "int8_round_trip_ms_median": 1e3 * float(np.median(rtt)),
                "int8_round_trip_ms_p90": 1e3 * float(np.percentile(rtt, 90)),
                "heartbeat_round_trip_ms_median": 1e3 * float(np.median(hb)),
                "infer_over_heartbeat_round_trip": float(np.median(rtt) / np.median(hb)),
                "infer_request_wire_bytes": P.wire_bytes(OBSERVATION_DIM * 4),
                "steps": infer_steps,
            })
            out["infer_state"] = _infer_state_bench(c, obs, infer_steps, float(np.median(rtt)))
            out["link"] = c.stats.as_dict()
        return out


def _infer_state_bench(c, obs: np.ndarray, steps: int, full_rtt_s: float) -> dict:
    """Per-step round trip of INFER_STATE, ``steps`` inferences each, against the full INFER
    round trip measured in the same run. The on-board histories are loaded with full INFERs
    first (that is what the PIL backend does on an episode's first step)."""
    hello = c.hello()
    rows_max = hello.state_rows_per_frame()
    if not rows_max:
        return {"supported": False}
    s = hello.state_dim
    out = {"supported": True, "state_dim": s, "history_length": hello.history_length,
           "max_histories": hello.max_histories, "max_rows_per_frame": rows_max,
           "full_infer_request_wire_bytes": P.wire_bytes(4 * hello.observation_dim + 4)}
    for rows in sorted({1, 8, rows_max}):
        for env in range(rows):
            c.infer(obs[env], env=env)
        frame_s, ticks = [], []
        envs = list(range(rows))
        for k in range(max(1, steps // rows)):
            states = obs[[(k * rows + r) % len(obs) for r in envs], :s]
            t0 = time.perf_counter()
            _, tk, _ = c.infer_state(envs, states, hello.action_dim)
            frame_s.append(time.perf_counter() - t0)
            ticks.extend(int(t) for t in tk)
        per_row = float(np.median(frame_s)) / rows
        out[f"rows_{rows}"] = {
            "frames": len(frame_s),
            "frame_round_trip_ms_median": 1e3 * float(np.median(frame_s)),
            "per_step_round_trip_ms": 1e3 * per_row,
            "request_wire_bytes": P.wire_bytes(2 + rows * (2 + 4 * s)),
            "reply_wire_bytes": P.wire_bytes(rows * (4 * hello.action_dim + 4) + 4),
            "instructions_per_inference_median": int(np.median(ticks)),
            "speedup_vs_full_infer": full_rtt_s / per_row,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--infer-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default=None, help="policy.pt (default: a seeded random actor)")
    args = ap.parse_args()
    print(json.dumps(run_bridge_bench(args.policy, repeats=args.repeats,
                                      infer_steps=args.infer_steps, seed=args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

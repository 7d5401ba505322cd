"""libFuzzer runs of the shared protocol core (framing, commands, the two-slot model store over
the host NOR-flash emulator), the bridge firmware's target commands and the Crazyflie app's link
(host builds): the one fuzzing module, used by bench/fuzz/fuzz_bridge.py and the fuzz tests
(tests/conftest.py puts this folder on sys.path). Not part of the installed package.

The harness is ``firmware/host/fuzz_bridge.c``; its input format (a mode byte, then raw bytes
or framed records) is described there. Seeds: whole valid sessions (HELLO, an upload of a
real exported model, COMMIT, ACTIVATE, INFER, ARM, heartbeats, clock advances) so the
fuzzer starts deep inside the command handler, raw wire captures of the same sessions, the
sessions with a power cut and a reboot, and boots over fuzzable slot headers.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np

from nanofly.policy.observation import OBSERVATION_DIM

from nanofly.firmware_bridge import protocol as P

TICK = 0xFE  # harness record: advance the clock by 4 * arg ms
MODE_RAW, MODE_SLOT_HEADERS, MODE_POWER_CUT, MODE_REBOOT = 1, 2, 4, 8  # harness mode bits


def slot_header(sequence: int, blob: bytes, fmt: int, model_id: int, activated: bool = True) -> bytes:
    """A store slot header (core/nf_store.h) for ``blob``: 32 bytes, header CRC included."""
    head = struct.pack("<IIIIB3xI", 0x4C53464E, sequence, len(blob), P.model_crc(blob), fmt, model_id)
    return head + struct.pack("<II", zlib.crc32(head), 0x56544341 if activated else 0xFFFFFFFF)


def _record(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BBH", ftype, seq & 0xFF, len(payload)) + payload


def session_records(blob: bytes, fmt: int, *, chunk: int = 512, seed: int = 0,
                    obs_dim: int = OBSERVATION_DIM) -> list[tuple[int, int, bytes]]:
    """(type, seq, payload) of a complete upload + use of ``blob``."""
    rng = np.random.default_rng(seed)
    crc = P.model_crc(blob)
    recs = [(P.CMD_HELLO, P.hello_request()), (P.CMD_BEGIN, P.begin_request(len(blob), crc, fmt, 7))]
    recs += [(P.CMD_CHUNK, P.chunk_request(o, blob[o:o + chunk])) for o in range(0, len(blob), chunk)]
    recs += [(P.CMD_COMMIT, b""), (P.CMD_ACTIVATE, struct.pack("<I", crc))]
    obs = rng.uniform(-1, 1, (2, obs_dim)).astype("<f4")
    recs += [(P.CMD_INFER, obs[0].tobytes()), (P.CMD_ARM, b""), (P.CMD_INFER, obs[1].tobytes()),
             (P.CMD_HEARTBEAT, b""), (P.CMD_STATUS, b"")]
    # on-board histories: load envs 0 and 2, then compact steps (one repeated)
    states = obs[:, :18].tobytes()
    step = P.infer_state_request([0, 2], states)
    recs += [(P.CMD_INFER, P.infer_request(obs[0].tobytes(), 0)),
             (P.CMD_INFER, P.infer_request(obs[1].tobytes(), 2)),
             (P.CMD_INFER_STATE, step), (P.CMD_INFER_STATE, step),
             (P.CMD_INFER_STATE, P.infer_state_request([1], obs[0, :18].tobytes()))]
    return [(t, i, p) for i, (t, p) in enumerate(recs)]


def arm_after_failsafe_input(records: list[tuple[int, int, bytes]]) -> bytes:
    """A harness input (structured mode): ``records`` (a session that activates a model), then
    ARM, 240 ms without a heartbeat (the dead man's switch trips), the very same ARM frame
    again (a host retry whose first reply was lost) and STATUS. The harness aborts when that
    repeated ARM is answered OK while the board stays disarmed."""
    arm = _record(P.CMD_ARM, 0xA5)
    return (b"\x00" + b"".join(_record(t, s, p) for t, s, p in records) + arm
            + bytes([TICK, 60]) + arm + _record(P.CMD_STATUS, 0xA6))


def write_seed_corpus(corpus_dir: str | os.PathLike, blobs: dict[int, bytes]) -> int:
    """Write seed inputs for each (format -> blob); returns the number of files."""
    corpus_dir = Path(corpus_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    n = 0

    def put(name: str, data: bytes) -> None:
        nonlocal n
        (corpus_dir / name).write_bytes(data)
        n += 1

    for fmt, blob in blobs.items():
        recs = session_records(blob, fmt)
        structured = b"".join(_record(t, s, p) for t, s, p in recs)
        # with clock advances: heartbeat, then 60 * 4 ms of silence trips the dead man's switch
        put(f"session_{fmt}", b"\x00" + structured + bytes([TICK, 20]) + _record(P.CMD_HEARTBEAT, 90)
            + bytes([TICK, 60]) + _record(P.CMD_STATUS, 91))
        put(f"wire_{fmt}", b"\x01" + b"".join(P.encode_frame(t, s, p) for t, s, p in recs))
        put(f"repeat_{fmt}", b"\x00" + b"".join(_record(t, s, p) * 2 for t, s, p in recs[:4]))
        put(f"arm_after_failsafe_{fmt}", arm_after_failsafe_input(recs))
        # power cut after a few flash operations (torn after 100 bytes), then a reboot
        for ops in (0, 2, 5):
            put(f"power_cut_{ops}_{fmt}", bytes([MODE_POWER_CUT, ops, 100]) + structured)
        put(f"reboot_{fmt}", bytes([MODE_REBOOT]) + structured)
        # boot over slot headers that pass their CRC (the blobs behind them do not)
        headers = b"".join(slot_header(seq, blob, fmt, 7) + blob[:16] for seq in (3, 4))
        put(f"slot_headers_{fmt}", bytes([MODE_SLOT_HEADERS]) + headers + structured)
    put("unknown", b"\x00" + _record(0x42, 1) + _record(P.CMD_STATUS, 2))
    put("garbage", b"\x01" + bytes(range(256)) * 4)
    return n


def run_fuzzer(binary: str | os.PathLike, corpus_dir: str | os.PathLike, *, seconds: float,
               artifacts_dir: str | os.PathLike, seed: int = 0, timeout_per_input_s: int = 10,
               max_len: int = 70000, log_path: str | os.PathLike | None = None) -> dict:
    """Run libFuzzer for ``seconds``; returns executions, crashes, hangs and coverage.

    A crash (sanitizer report or the harness's abort) or a hang (one input running longer
    than ``timeout_per_input_s``) stops libFuzzer and leaves a ``crash-*`` / ``timeout-*``
    file in ``artifacts_dir``."""
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(binary), str(corpus_dir), f"-max_total_time={int(seconds)}", f"-seed={seed or 1}",
           f"-timeout={timeout_per_input_s}", f"-max_len={max_len}", "-print_final_stats=1",
           f"-artifact_prefix={artifacts_dir}/", "-close_fd_mask=1", "-rss_limit_mb=2048"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    wall = time.monotonic() - t0
    log = proc.stderr
    if log_path:
        Path(log_path).write_text(log)

    def stat(name: str) -> int | None:
        m = re.search(rf"stat::{name}:\s+(\d+)", log)
        return int(m.group(1)) if m else None

    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    inited = re.search(r"INITED cov: (\d+)", log)
    crashes = sorted(p.name for p in artifacts_dir.glob("crash-*")) + \
        sorted(p.name for p in artifacts_dir.glob("leak-*")) + sorted(p.name for p in artifacts_dir.glob("oom-*"))
    hangs = sorted(p.name for p in artifacts_dir.glob("timeout-*"))
    return {
        "exit_code": proc.returncode, "wall_s": wall, "seconds_requested": seconds,
        "executions": stat("number_of_executed_units"),
        "exec_per_s": stat("average_exec_per_sec"),
        "coverage_edges": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "initial_coverage_edges": int(inited.group(1)) if inited else None,  # seeds alone
        "crashes": len(crashes), "hangs": len(hangs), "artifacts": crashes + hangs,
        "log_tail": "\n".join(log.strip().splitlines()[-15:]) if proc.returncode else "",
    }


# ---- the Crazyflie app's link (crazyflie/sitl/fuzz_cf_link.c) ---------------------------------
CF_LINK_FUZZER_NAME = "fuzz_cf_link"
CF_FRAME, CF_PACKETS, CF_RAW, CF_UART, CF_BUSY, CF_STEP, CF_CUT, CF_REBOOT = range(8)  # harness ops
CF_MODE_RAW_PACKETS = 1
APP_CHANNEL_MTU = 30


def build_cf_link_fuzzer(build_dir: str | os.PathLike, crazyflie_base: str | os.PathLike | None = None,
                         *, link_c: str | os.PathLike | None = None) -> Path:
    """Compile the libFuzzer harness of the Crazyflie app's link: the real
    ``crazyflie/src/nanofly_cf_link.c`` (``link_c``: another copy of it, for tests that check
    the harness catches a broken link), the shared core and the NOR-flash emulator, against the
    firmware's ``app_channel.h`` (``crazyflie_base``, default: ``crazyflie_tree.locate_tree()``,
    which raises ``TreeNotFound`` when there is no firmware tree), with ASan + UBSan."""
    from nanofly.firmware_bridge.crazyflie_standin import APP_SRC, CORE_DIR, LINK_C, SITL_DIR
    from nanofly.firmware_bridge.crazyflie_tree import locate_tree
    from nanofly.export.runtime import runtime_sources

    from nanofly.firmware_bridge.firmware import FirmwareBuildError, export_c_dir, fuzzer_missing

    missing = fuzzer_missing()
    if missing:
        raise FirmwareBuildError(missing)
    base = Path(crazyflie_base) if crazyflie_base else locate_tree()
    interface = base / "src" / "modules" / "interface"
    if not (interface / "app_channel.h").is_file():
        raise FirmwareBuildError(f"{interface / 'app_channel.h'} is missing: is {base} a crazyflie-firmware tree?")
    export_c = export_c_dir()
    sources = [CORE_DIR / "frame.c", CORE_DIR / "nf_store.c", CORE_DIR / "nf_core.c",
               CORE_DIR / "host" / "nor_flash.c", *runtime_sources(export_c),
               Path(link_c or LINK_C), SITL_DIR / "fuzz_cf_link.c"]
    out = Path(build_dir).resolve() / CF_LINK_FUZZER_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["clang", "-g", "-O1", "-std=gnu11", "-fsanitize=fuzzer,address,undefined",
           "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror",
           *(f"-I{d}" for d in (CORE_DIR, CORE_DIR / "host", export_c, APP_SRC, interface)),
           *map(str, sources), "-lm", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise FirmwareBuildError(f"Crazyflie link fuzzer build failed (exit {proc.returncode}): "
                                 f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return out


def _cf_frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    return bytes([CF_FRAME]) + _record(ftype, seq, payload)


def _cf_flush(packet_bytes: int = APP_CHANNEL_MTU) -> bytes:
    """Send everything queued in packets of ``packet_bytes`` (1..30)."""
    return bytes([CF_PACKETS, 31 + (packet_bytes - 1)])


def cf_upload_records(blob: bytes, fmt: int, *, model_id: int = 7, chunk: int = 512, seq0: int = 0,
                      packet_bytes: int = APP_CHANNEL_MTU, activate: bool = True,
                      step_first: bool = True) -> list[bytes]:
    """Harness records (fuzz_cf_link.c): a controller step when ``step_first`` (it takes the
    model published at boot or by a previous ACTIVATE: flash writes wait for that), then HELLO,
    BEGIN, CHUNKs, COMMIT, ACTIVATE and STATUS, each sent at once over the app channel in
    packets of ``packet_bytes``."""
    crc = P.model_crc(blob)
    reqs = [(P.CMD_HELLO, P.hello_request()), (P.CMD_BEGIN, P.begin_request(len(blob), crc, fmt, model_id))]
    reqs += [(P.CMD_CHUNK, P.chunk_request(o, blob[o:o + chunk])) for o in range(0, len(blob), chunk)]
    reqs += [(P.CMD_COMMIT, b"")]
    if activate:
        reqs += [(P.CMD_ACTIVATE, struct.pack("<I", crc))]
    reqs += [(P.CMD_STATUS, b"")]
    return [bytes([CF_STEP])] * step_first + [_cf_frame(t, seq0 + i, p) + _cf_flush(packet_bytes)
                                 for i, (t, p) in enumerate(reqs)]


def write_cf_link_seed_corpus(corpus_dir: str | os.PathLike, blobs: dict[int, bytes]) -> int:
    """Seed inputs for the Crazyflie link harness from real exports (format -> blob): uploads in
    whole and odd-sized app-channel packets, over the deck UART, while armed and flying, a second
    upload before the controller took the first model, power cuts and reboots, raw packets.
    Returns the number of files."""
    corpus_dir = Path(corpus_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    step, reboot = bytes([CF_STEP]), bytes([CF_REBOOT])

    def put(name: str, data: bytes) -> None:
        nonlocal n
        (corpus_dir / name).write_bytes(data)
        n += 1

    for fmt, blob in blobs.items():
        recs = cf_upload_records(blob, fmt)
        up = b"".join(recs)
        other_fmt, other = next(((f, b) for f, b in blobs.items() if f != fmt), (fmt, blob))
        second = b"".join(cf_upload_records(other, other_fmt, model_id=8, seq0=40))
        put(f"upload_{fmt}", b"\0" + up + step + reboot + step)
        for size in (1, 7, 29):
            put(f"upload_packets{size}_{fmt}",
                b"\0" + b"".join(cf_upload_records(blob, fmt, packet_bytes=size)) + step)
        put(f"armed_{fmt}", b"\0" + bytes([CF_BUSY, 1]) + up + bytes([CF_BUSY, 2]) + up
            + bytes([CF_BUSY, 0]) + up + step)
        # armed half-way through the upload, disarmed, the upload again (it resumes)
        half = len(recs) // 2
        put(f"armed_midway_{fmt}", b"\0" + b"".join(recs[:half]) + bytes([CF_BUSY, 1])
            + b"".join(recs[half:]) + bytes([CF_BUSY, 0]) + up + step)
        # the controller runs the first model; the second is activated; a third upload before
        # the controller took the second would erase the first's slot under it (refused: busy),
        # then after the controller's step
        third = b"".join(cf_upload_records(blob, fmt, model_id=9, seq0=80, step_first=False))
        put(f"handover_{fmt}", b"\0" + up + step + second + third + step + third + step + reboot + step)
        for ops in (0, 2, 5, 9):
            put(f"power_cut_{ops}_{fmt}", b"\0" + up + step + bytes([CF_CUT, ops, 100]) + second
                + reboot + step + second + step)
        wire = b"".join(P.encode_frame(P.CMD_HELLO, 1, P.hello_request()) for _ in range(2))
        put(f"uart_{fmt}", b"\0" + b"".join(bytes([CF_UART, len(wire)]) + wire for _ in range(2)) + up + step)
        raw = b"".join(P.encode_frame(t, s, p) for t, s, p in session_records(blob, fmt)[:-5])
        put(f"raw_packets_{fmt}", bytes([CF_MODE_RAW_PACKETS]) + b"".join(
            bytes([len(raw[o:o + APP_CHANNEL_MTU])]) + raw[o:o + APP_CHANNEL_MTU]
            for o in range(0, len(raw), APP_CHANNEL_MTU)))
    put("garbage", bytes([CF_MODE_RAW_PACKETS]) + b"".join(bytes([30]) + bytes(range(i, i + 30)) for i in range(0, 200, 30)))
    return n


def fuzz_against_garbage(binary, corpus_dir: Path, work: Path, *, seconds: float, seed: int,
                         max_len: int) -> tuple[dict, dict]:
    """A libFuzzer run of ``seconds`` from ``corpus_dir``, and a 1 s run from its ``garbage``
    seed alone: the second's coverage is the baseline that session seeds must beat (they
    should reach far more of the code than bytes at random)."""
    result = run_fuzzer(binary, corpus_dir, seconds=seconds, artifacts_dir=work / "artifacts",
                        seed=seed, max_len=max_len)
    garbage_only = work / "garbage_corpus"
    garbage_only.mkdir()
    (garbage_only / "garbage").write_bytes((Path(corpus_dir) / "garbage").read_bytes())
    shallow = run_fuzzer(binary, garbage_only, seconds=1, artifacts_dir=work / "artifacts2",
                         seed=seed, max_len=max_len)
    return result, shallow

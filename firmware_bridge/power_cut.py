"""Power cuts during a model upload into the persistent store (the shared C core on the host).

The flash image starts with the old model active. The sequence cut is two whole uploads: the
new model (verified, activated), then the old one again, whose BEGIN erases the slot the
first old copy was in while the new model runs. For every erase/program operation of that
sequence, and for a spread of byte counts within it (a torn operation: a program clears the
bits of only its first *k* bytes, an erase sets only its first *k* bytes to 0xFF), the image
starts from the same state, the uploads run until the emulated power goes, and then the board
boots from what the flash holds. A boot passes when the active model is exactly the old or
exactly the new blob (every byte compared with the blob the host sent, its slot header whole
and activated), and the core can run it. Every tenth cut is followed by a fresh upload of the
new model, which must succeed (the store is not left wedged).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from nanofly.policy.observation import ACTION_DIM, OBSERVATION_DIM

from . import protocol as P
from .core_host import HostCore

HEADER_BYTES = 32  # nf_store.h: NF_SLOT_HEADER_BYTES


def tear_points(kind: str, length: int, per_op: int) -> list[int]:
    """Byte counts at which to cut an operation of ``length`` bytes: 0 (nothing written),
    every count for a short program (slot headers, activation marks), else ``per_op`` counts
    spread over the range, always including the word boundaries around the start and end."""
    if kind == "P" and length <= 64:
        return list(range(length))
    points = {0, 1, 3, 4, 5, length - 1, length - 4, length // 2}
    if per_op > 1:
        points.update(round(i * (length - 1) / (per_op - 1)) for i in range(per_op))
    return sorted(p for p in points if 0 <= p < length)


def _slot_blob(image: bytes, slot: int, slot_stride: int, size: int) -> bytes:
    start = slot * slot_stride + HEADER_BYTES
    return image[start:start + size]


def run_power_cut_bench(old_blob: bytes, old_fmt: int, new_blob: bytes, new_fmt: int, *,
                        chunk: int = 2044, tears_per_op: int = 48, recover_every: int = 10,
                        work_dir: str | Path | None = None, obs_dim: int = OBSERVATION_DIM,
                        act_dim: int = ACTION_DIM) -> dict:
    t0 = time.perf_counter()
    old_crc, new_crc = P.model_crc(old_blob), P.model_crc(new_blob)
    if old_crc == new_crc:
        raise ValueError("the old and the new model must differ (same model CRC)")
    tmp = tempfile.TemporaryDirectory(prefix="nanofly_power_cut_") if work_dir is None else None
    work = Path(tmp.name if tmp else work_dir)
    work.mkdir(parents=True, exist_ok=True)
    flash = work / "flash.bin"
    flash.unlink(missing_ok=True)
    try:
        kw = dict(obs_dim=obs_dim, act_dim=act_dim)
        # the starting image: the old model uploaded and active
        with HostCore(flash, **kw) as core:
            core.upload(old_blob, old_fmt, 1, chunk=chunk)
            assert core.active()["crc"] == old_crc
            slot_stride = core.slot_stride_bytes
        base = flash.read_bytes()
        sequence = ((new_blob, new_fmt, 2), (old_blob, old_fmt, 3))

        def run_sequence(core: HostCore) -> None:
            for blob, fmt, model_id in sequence:
                core.upload(blob, fmt, model_id, chunk=chunk)

        # the operations of the whole sequence, without a cut
        with HostCore(flash, **kw) as core:
            core.cut_power_after(-1)
            core.upload(new_blob, new_fmt, 2, chunk=chunk)
            ops_new = len(core.flash_trace())
            assert core.active()["crc"] == new_crc
            core.upload(old_blob, old_fmt, 3, chunk=chunk)
            ops = core.flash_trace()
            assert core.active()["crc"] == old_crc
        expected = {old_crc: old_blob, new_crc: new_blob}
        counts = {"old": 0, "new": 0, "none": 0, "torn_or_unverified": 0}
        failures: list[dict] = []
        cuts = recovered = recover_failed = 0
        cut_while = {"E": 0, "P": 0}
        obs = [0.1] * obs_dim
        for op_index, (kind, length) in enumerate(ops):
            for tear in tear_points(kind, length, tears_per_op):
                flash.write_bytes(base)
                with HostCore(flash, **kw) as core:
                    core.cut_power_after(op_index, tear)
                    try:
                        run_sequence(core)
                    except P.DeviceError as exc:
                        if exc.code != P.ERR_FLASH:  # the only way a cut may surface
                            raise
                    assert not core.powered, "the cut did not happen"
                cuts += 1
                cut_while[kind] += 1
                with HostCore(flash, **kw) as core:  # power back: boot
                    active = core.active()
                    image = flash.read_bytes()
                    outcome = "none"
                    if active is not None:
                        blob = expected.get(active["crc"])
                        whole = (blob is not None and active["size"] == len(blob)
                                 and _slot_blob(image, active["slot"], slot_stride, len(blob)) == blob
                                 and core.self_check() == 0 and core.infer(obs) is not None)
                        outcome = ("old" if active["crc"] == old_crc else "new") if whole else "torn_or_unverified"
                    counts[outcome] += 1
                    if outcome in ("none", "torn_or_unverified") and len(failures) < 10:
                        failures.append({"op": op_index, "kind": kind, "tear_bytes": tear,
                                         "active": active})
                    if recover_every and cuts % recover_every == 0:
                        try:
                            core.upload(new_blob, new_fmt, 3, chunk=chunk)
                            ok = core.active()["crc"] == new_crc
                        except P.ProtocolError:
                            ok = False
                        recovered += ok
                        recover_failed += not ok
        return {
            "model_bytes": {"old": len(old_blob), "new": len(new_blob)},
            "model_crc": {"old": f"0x{old_crc:08x}", "new": f"0x{new_crc:08x}"},
            "chunk_bytes": chunk,
            "flash_ops_upload_new": ops_new,
            "flash_ops_upload_back_to_old": len(ops) - ops_new,
            "erase_ops": sum(k == "E" for k, _ in ops),
            "program_ops": sum(k == "P" for k, _ in ops),
            "bytes_programmed": sum(n for k, n in ops if k == "P"),
            "cuts": cuts,
            "cuts_during_erase": cut_while["E"],
            "cuts_during_program": cut_while["P"],
            "boots_old_model": counts["old"],
            "boots_new_model": counts["new"],
            "boots_no_model": counts["none"],
            "boots_torn_or_unverified": counts["torn_or_unverified"],
            "boots_old_or_new": counts["old"] + counts["new"],
            "uploads_after_cut_ok": recovered,
            "uploads_after_cut_failed": recover_failed,
            "failures": failures,
            "wall_s": round(time.perf_counter() - t0, 2),
        }
    finally:
        if tmp:
            tmp.cleanup()


def hover_int8_blobs(policy: str | Path, work_dir: str | Path) -> tuple[bytes, bytes]:
    """(int8 blob, f32 blob) of an export of ``policy`` (a policy.pt, exported into work_dir
    with the exporter and synthetic calibration observations, or an export directory)."""
    from .client import read_export_blob
    from .testing import export

    policy = Path(policy)
    export_dir = policy if policy.is_dir() else export(policy, Path(work_dir) / "export")
    int8, _ = read_export_blob(export_dir, "int8")
    f32, _ = read_export_blob(export_dir, "f32")
    return int8, f32

"""Processor-in-the-loop backend: the policy runs on the (emulated) MCU, one INFER per row.

    backend = make_backend("emulate", "models/crazyflie_hover/policy.pt")   # starts QEMU
    backend = make_backend("socket://127.0.0.1:4444", export_dir)           # a running board
    actions = backend(observations)          # (N, 146) float32 -> (N, 4) float32
    backend.info()                           # round trip per step, instructions per inference
    backend.close()

The model is uploaded (and activated) unless the board already runs the same blob (same
CRC-32). Same call signature as ``nanofly.export.backends.make_backend``.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import protocol as P
from .client import BridgeClient, read_export_blob, upload_model

EMULATE = "emulate"


def _strip_prefix(target: str) -> str:
    return target[len("pil:"):] if target.startswith("pil:") else target


def resolve_export_dir(policy_or_export_dir: str | os.PathLike, fmt: str, seed: int = 0
                       ) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """An export directory for a policy file (exported into a temporary directory) or the
    export directory itself."""
    path = Path(policy_or_export_dir)
    if path.is_dir():
        if not (path / f"policy_{fmt}.bin").is_file():
            raise FileNotFoundError(f"{path}: no policy_{fmt}.bin; export the policy first "
                                    "(`nanofly export POLICY --out DIR`)")
        return path, None
    if path.is_file():
        from nanofly.export import export_policy

        tmp = tempfile.TemporaryDirectory(prefix="nanofly-pil-")
        export_policy(path, tmp.name, seed=seed)
        return Path(tmp.name), tmp
    raise FileNotFoundError(f"{path}: neither a policy file nor an export directory")


class PILBackend:
    """Callable ``obs (N, obs_dim) float32 -> actions (N, act_dim) float32`` on a bridge board."""

    def __init__(self, target: str, policy_or_export_dir: str | os.PathLike, *, fmt: str = "int8",
                 timeout_s: float = 2.0, retries: int = 3, seed: int = 0, force_upload: bool = False):
        self.format = fmt
        self._board = None
        self._tmp = None
        self.client = None
        target = _strip_prefix(str(target))
        try:
            export_dir, self._tmp = resolve_export_dir(policy_or_export_dir, fmt, seed)
            blob, model_id = read_export_blob(export_dir, fmt)
            if target == EMULATE:
                from .emulator import EmulatedBoard

                self._board = EmulatedBoard().start()
                target = self._board.url
            self.url = target
            self.client = BridgeClient(target, timeout_s=timeout_s, retries=retries)
            self.hello = self.client.hello()
            self.crc = P.model_crc(blob)
            self.upload = None
            if force_upload or self.hello.active_crc != self.crc or self.hello.active_size != len(blob):
                self.upload = upload_model(self.client, blob, fmt, model_id=model_id)
            self.observation_dim = self.hello.observation_dim
            self.action_dim = self.hello.action_dim
        except BaseException:
            self.close()
            raise
        self._rtt_s: list[float] = []
        self._ticks: list[int] = []

    def __call__(self, observations) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        single = obs.ndim == 1
        obs = np.atleast_2d(obs)
        if obs.shape[1] != self.observation_dim:
            raise ValueError(f"observations have {obs.shape[1]} columns; the board's policy "
                             f"takes {self.observation_dim}")
        actions = np.empty((obs.shape[0], self.action_dim), dtype=np.float32)
        for i, row in enumerate(obs):
            t0 = time.perf_counter()
            action, ticks, crc = self.client.infer(row)
            self._rtt_s.append(time.perf_counter() - t0)
            self._ticks.append(ticks)
            if crc != self.crc:
                raise P.ProtocolError(f"the board answered with model CRC 0x{crc:08x}, expected "
                                      f"0x{self.crc:08x}: someone else changed its model")
            actions[i] = action
        return actions[0] if single else actions

    def info(self) -> dict:
        rtt = np.asarray(self._rtt_s)
        ticks = np.asarray(self._ticks)
        def summary(a: np.ndarray) -> dict | None:
            if not a.size:
                return None
            return {"median": float(np.median(a)), "mean": float(a.mean()),
                    "p90": float(np.percentile(a, 90)), "min": float(a.min()), "max": float(a.max())}

        return {
            "backend": "pil", "url": self.url, "format": self.format,
            "emulated": self._board is not None or self.hello.emulated,
            "model_crc": f"0x{self.crc:08x}", "steps": int(rtt.size),
            "round_trip_s": summary(rtt),
            "instructions_per_inference": summary(ticks),
            "counter": P.COUNTER_NAMES.get(self.hello.counter_kind, str(self.hello.counter_kind)),
            "upload": self.upload.as_dict() if self.upload else None,
            "link": self.client.stats.as_dict() if self.client else None,
        }

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._board is not None:
            self._board.stop()
            self._board = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "PILBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_backend(target: str, policy_or_export_dir: str | os.PathLike, **kwargs) -> PILBackend:
    """``target``: a pyserial URL, ``"emulate"`` (start QEMU), or either with a ``pil:``
    prefix. ``kwargs``: ``fmt`` ("int8" or "f32"), ``timeout_s``, ``retries``, ``seed``."""
    return PILBackend(target, policy_or_export_dir, **kwargs)

"""Processor-in-the-loop backend: the policy runs on the (emulated) MCU.

    backend = make_backend("emulate", "models/crazyflie_hover/policy.pt")   # starts QEMU
    backend = make_backend("socket://127.0.0.1:4444", export_dir)           # a running board
    actions = backend(observations)          # (N, obs_dim) float32 -> (N, 4) float32
    backend.info()                           # round trip per step, instructions per inference
    backend.close()

The model is uploaded (and activated) unless the board already runs the same blob (same
CRC-32). Same call signature as ``nanofly.export.backends.make_backend``.

Observations are ``[state (STATE_DIM) | action history (H actions, newest first)]`` (the
contract of ``nanofly.policy.observation``, which the firmware's NF_STATE_DIM follows) and the
history part is the policy's own previous actions, clipped to [-1, 1]. So the board keeps one
history per environment row (as the real deployment does) and the backend sends only the state
part (INFER_STATE, 72 instead of 584 bytes per row, many rows per frame). Per row the backend keeps
the history it expects (its previous actions, clipped like the simulator); a row whose incoming
history differs bit for bit (new episode, ``set_states``, first call, another batch size) gets
a full INFER, which also reloads that row's history on the board. Both paths give the same
bits, because the board then runs the model on the very same input.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import struct
import warnings

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


def blob_input_dim(blob: bytes) -> int:
    """Input width of a model blob (first layer width, u16 at byte 16 of the header)."""
    return struct.unpack_from("<H", blob, 16)[0]


def clip_actions(actions: np.ndarray) -> np.ndarray:
    """Actions as the simulator stores them in the history: min(max(a, -1), 1) in float32."""
    return np.minimum(np.maximum(actions.astype(np.float32), np.float32(-1)), np.float32(1))


class PILBackend:
    """Callable ``obs (N, obs_dim) float32 -> actions (N, act_dim) float32`` on a bridge board.

    ``compact``: use INFER_STATE with on-board histories where the board and model allow it
    (else one full INFER per row); ``state_rows_per_frame``: INFER_STATE rows per frame
    (None: as many as the negotiated payload holds)."""

    def __init__(self, target: str, policy_or_export_dir: str | os.PathLike, *, fmt: str = "int8",
                 timeout_s: float = 2.0, retries: int = 3, seed: int = 0, force_upload: bool = False,
                 compact: bool = True, state_rows_per_frame: int | None = None):
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
            self.compact_reason = self._compact_support(blob_input_dim(blob)) if compact else \
                "disabled by the caller (compact=False)"
        except BaseException:
            self.close()
            raise
        self.compact = self.compact_reason is None
        if compact and not self.compact:
            warnings.warn(f"PIL: full INFER for every step: {self.compact_reason}", stacklevel=2)
        self.state_dim = self.hello.state_dim if self.compact else self.observation_dim
        self.max_histories = self.hello.max_histories if self.compact else 0
        rows = self.hello.state_rows_per_frame() if self.compact else 0
        self.rows_per_frame = max(1, min(rows, state_rows_per_frame or rows)) if self.compact else 0
        self._expected: np.ndarray | None = None   # (N, history floats): what each row should carry
        self._synced: np.ndarray | None = None     # (N,) the board holds that history for the row
        self._rtt_s: list[float] = []              # per inference (a compact frame's time / rows)
        self._full_rtt_s: list[float] = []         # per full INFER
        self._frame_rtt_s: list[float] = []        # per INFER_STATE frame
        self._ticks: list[int] = []
        self.rows_full = self.rows_compact = self.history_refusals = 0

    def _compact_support(self, model_input_dim: int) -> str | None:
        """None when INFER_STATE can serve this model on this board, else why not."""
        h = self.hello
        if not h.history_length or not h.state_dim or not h.max_histories:
            return (f"the board (firmware {h.firmware_version}) has no INFER_STATE / on-board "
                    "action histories; rebuild and flash the current firmware")
        layout = h.state_dim + h.action_dim * h.history_length
        if model_input_dim != layout or h.observation_dim != layout:
            return (f"the model takes {model_input_dim} inputs, not the [state {h.state_dim} | "
                    f"{h.history_length} x {h.action_dim} action history] = {layout} layout the "
                    "firmware keeps histories for")
        if h.state_rows_per_frame() < 1:
            return f"negotiated payload {h.max_payload} B holds no INFER_STATE row"
        return None

    def __call__(self, observations) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        single = obs.ndim == 1
        obs = np.atleast_2d(obs)
        if obs.shape[1] != self.observation_dim:
            raise ValueError(f"observations have {obs.shape[1]} columns; the board's policy "
                             f"takes {self.observation_dim}")
        actions = np.empty((obs.shape[0], self.action_dim), dtype=np.float32)
        if not self.compact:
            for i, row in enumerate(obs):
                actions[i] = self._infer_full(row, None)
            return actions[0] if single else actions
        n, s = obs.shape[0], self.state_dim
        history = obs[:, s:]
        if self._expected is None or self._expected.shape[0] != n:
            self._expected = np.zeros_like(history)
            self._synced = np.zeros(n, dtype=bool)
        # bit for bit: the board must see exactly the observation's history
        same = (history.view(np.uint32) == self._expected.view(np.uint32)).all(axis=1)
        in_sync = self._synced & same
        in_sync[self.max_histories:] = False
        self._synced[:] = False  # until this call has set each row's history
        try:
            full_rows = list(np.flatnonzero(~in_sync))
            compact_rows = np.flatnonzero(in_sync)
            for start in range(0, compact_rows.size, self.rows_per_frame):
                rows = compact_rows[start:start + self.rows_per_frame]
                try:
                    got = self._infer_state(rows, obs[rows, :s])
                except P.DeviceError as err:
                    if err.code != P.ERR_HISTORY:
                        raise
                    # e.g. the board restarted or an upload replaced the histories: the frame
                    # changed nothing, so reload these rows with full INFERs
                    self.history_refusals += 1
                    full_rows += list(rows)
                    continue
                actions[rows] = got
            for i in full_rows:
                actions[i] = self._infer_full(obs[i], int(i) if i < self.max_histories else None)
        except BaseException:
            self._expected = None  # unknown what reached the board: resynchronize everything
            raise
        # each row's board history is now [clip(action), observation history minus its oldest]
        self._expected = np.concatenate([clip_actions(actions), history[:, :-self.action_dim]], axis=1)
        self._synced[:self.max_histories] = True
        return actions[0] if single else actions

    def _check_crc(self, crc: int) -> None:
        if crc != self.crc:
            raise P.ProtocolError(f"the board answered with model CRC 0x{crc:08x}, expected "
                                  f"0x{self.crc:08x}: someone else changed its model")

    def _infer_full(self, row: np.ndarray, env: int | None) -> np.ndarray:
        t0 = time.perf_counter()
        action, ticks, crc = self.client.infer(row, env=env)
        dt = time.perf_counter() - t0
        self._rtt_s.append(dt)
        self._full_rtt_s.append(dt)
        self._ticks.append(ticks)
        self._check_crc(crc)
        self.rows_full += 1
        return action

    def _infer_state(self, rows: np.ndarray, states: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        actions, ticks, crc = self.client.infer_state(rows, states, self.action_dim)
        dt = time.perf_counter() - t0
        self._frame_rtt_s.append(dt)
        self._rtt_s.extend([dt / len(rows)] * len(rows))
        self._ticks.extend(int(t) for t in ticks)
        self._check_crc(crc)
        self.rows_compact += len(rows)
        return actions

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
            "round_trip_s": summary(rtt),   # per inference (INFER_STATE: frame time / rows)
            "compact": {
                "enabled": self.compact, "reason_disabled": self.compact_reason,
                "state_dim": self.state_dim, "max_histories": self.max_histories,
                "rows_per_frame": self.rows_per_frame,
                "rows_full_infer": self.rows_full, "rows_infer_state": self.rows_compact,
                "history_refusals": self.history_refusals,
                "full_infer_round_trip_s": summary(np.asarray(self._full_rtt_s)),
                "infer_state_frame_round_trip_s": summary(np.asarray(self._frame_rtt_s)),
            },
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
    prefix. ``kwargs``: ``fmt`` ("int8" or "f32"), ``timeout_s``, ``retries``, ``seed``,
    ``compact`` (default True), ``state_rows_per_frame``."""
    return PILBackend(target, policy_or_export_dir, **kwargs)

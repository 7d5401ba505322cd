"""Helpers for tests and benchmarks of the bridge: policies, exports, reference actions and
deliberately broken blobs. (Not used by the bridge itself.)"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from nanofly.policy.observation import (ACTION_DIM, DEFAULT_HISTORY_LENGTH, OBSERVATION_DIM,
                                        STATE_DIM)

HOVER_POLICY = Path(__file__).resolve().parents[2] / "models" / "crazyflie_hover" / "policy.pt"


def random_policy(path: str | os.PathLike, *, layer_sizes=(OBSERVATION_DIM, 64, 64, ACTION_DIM),
                  seed: int = 0) -> Path:
    """A seeded random actor saved as a policy file (stands in for a trained one)."""
    from nanofly.policy.actor import init_actor, save_policy

    actor = init_actor(list(layer_sizes), seed)
    return save_policy(path, actor,
                       observation={"dim": int(layer_sizes[0]), "note": "random actor for bridge tests"},
                       action={"dim": int(layer_sizes[-1]), "mapping": "rpm = (a + 1) / 2 * max_rpm"},
                       vehicle={"preset": "crazyflie_paper", "params": {}},
                       extra={"seed": seed, "purpose": "firmware bridge test"})


def test_policy(work_dir: str | os.PathLike, seed: int = 0) -> Path:
    """The lead's trained hover policy when it exists, else a seeded random actor."""
    if HOVER_POLICY.is_file():
        return HOVER_POLICY
    return random_policy(Path(work_dir) / f"random_actor_{seed}.pt", seed=seed)


test_policy.__test__ = False  # not a pytest test


def export(policy: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0,
           n_calibration: int = 2048) -> Path:
    """Export with the real exporter; calibration and evaluation observations are the
    exporter's synthetic hover-like ones (seeded), which keeps tests fast and independent of
    the simulator. The bridge sends the resulting blobs unchanged either way."""
    import torch

    from nanofly.export import export_policy
    from nanofly.export.calibration import synthetic_observations

    dim = int(torch.load(policy, map_location="cpu", weights_only=True)["actor"]["layer_sizes"][0])
    export_policy(policy, out_dir, seed=seed,
                  calibration_obs=(synthetic_observations(n_calibration, dim, seed), "synthetic"),
                  eval_obs=(synthetic_observations(1000, dim, seed + 1), "synthetic"))
    return Path(out_dir)


def f32_blob(layer_sizes, seed: int = 0) -> bytes:
    """A float32 model blob of a seeded random actor, written by the exporter's blob writer
    (``nanofly.export.blob.pack_f32``) without a full export."""
    from nanofly.export.blob import pack_f32
    from nanofly.policy.actor import init_actor

    layers = init_actor(list(layer_sizes), seed).linear_layers()
    return pack_f32([l.weight.detach().numpy() for l in layers], [l.bias.detach().numpy() for l in layers])


def observations(n: int, dim: int = OBSERVATION_DIM, seed: int = 0) -> np.ndarray:
    """Observations in [-1, 1] (float32), seeded."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, dim)).astype(np.float32)


def host_reference(export_dir: str | os.PathLike, fmt: str, obs: np.ndarray) -> np.ndarray:
    """Actions of the host C runtime (``nanofly.export.backends``) for the same blob."""
    from nanofly.export.backends import make_backend

    backend = make_backend(f"c-{fmt}", str(export_dir))
    try:
        return np.asarray(backend(obs), dtype=np.float32)
    finally:
        close = getattr(backend, "close", None)
        if close:
            close()


def assert_upload_overhead(result: dict, clean_bound: float = 1.10) -> None:
    """Bytes on the wire of an upload (``UploadResult.as_dict()``) within ``clean_bound`` per
    model byte, plus what its lost requests cost.

    On a clean link no chunk is lost and the allowance is zero. On a loaded host a reply can
    miss its adaptive wait: that chunk (or control request) goes out again, and the halved
    chunks after it need extra frames; each is allowed at its largest wire size and nothing
    else is."""
    from nanofly.firmware_bridge import protocol as P

    chunking = result["chunking"]
    largest = chunking["chunk_bytes_max"]
    lost = result["retries"]            # chunks lost + control requests sent again
    frame = P.wire_bytes(4 + largest) + P.wire_bytes(4)             # one CHUNK and its reply
    framing = frame - largest                                        # per CHUNK beyond its data
    extra_chunks = max(0, chunking["chunks_ok"] - -(-result["size_bytes"] // largest))
    allowance = lost * frame + extra_chunks * framing
    bound = clean_bound * result["size_bytes"] + allowance
    assert result["bytes_on_wire"] <= bound, (
        f"{result['bytes_on_wire']} bytes on the wire for {result['size_bytes']} model bytes, "
        f"bound {bound:.0f} ({lost} lost requests, {extra_chunks} extra chunks): {chunking}")


def payload_offset(blob: bytes) -> int:
    n_layers = blob[8]
    return (16 + 2 * (n_layers + 1) + 3) // 4 * 4


def with_crc_fixed(body_and_old_crc: bytes) -> bytes:
    body = bytes(body_and_old_crc[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def with_nan_weight(blob: bytes) -> bytes:
    """The blob with its first payload float (f32: first bias; int8: first input multiplier)
    set to NaN and its own CRC recomputed: only the finite-weights check can catch it."""
    out = bytearray(blob)
    struct.pack_into("<f", out, payload_offset(blob), float("nan"))
    return with_crc_fixed(bytes(out))


def with_stale_crc(blob: bytes) -> bytes:
    """The blob with one payload byte changed and its own trailing CRC left as it was."""
    out = bytearray(blob)
    out[payload_offset(blob) + 5] ^= 0x10
    return bytes(out)


def truncated(blob: bytes, keep: int) -> bytes:
    """The first ``keep`` bytes of the blob, ending in a CRC of those bytes, i.e. a file cut
    short but internally consistent for the transfer."""
    return with_crc_fixed(bytes(blob[:keep]) + b"\0\0\0\0")


def closed_loop_rollout(policy, n_envs: int, steps: int, *, state_dim: int = STATE_DIM,
                        history_length: int = DEFAULT_HISTORY_LENGTH,
                        reset_every: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feed ``policy`` observations [random state | its own previous actions, clipped to
    [-1, 1], newest first], as the simulator does, without the simulator: returns the
    observations (steps, n_envs, dim) and actions (steps, n_envs, 4). Every ``reset_every``
    steps env ``step % n_envs`` starts over with a constant history (a new episode)."""
    rng = np.random.default_rng(seed)
    dim = state_dim + 4 * history_length
    history = np.full((n_envs, 4 * history_length), -0.25, np.float32)
    all_obs = np.zeros((steps, n_envs, dim), np.float32)
    all_actions = np.zeros((steps, n_envs, 4), np.float32)
    for t in range(steps):
        if reset_every and t and t % reset_every == 0:
            history[t % n_envs] = np.float32(rng.uniform(-1, 1))
        obs = np.concatenate([rng.uniform(-1, 1, (n_envs, state_dim)).astype(np.float32), history], axis=1)
        actions = np.asarray(policy(obs), dtype=np.float32).reshape(n_envs, 4)
        all_obs[t], all_actions[t] = obs, actions
        clipped = np.minimum(np.maximum(actions, np.float32(-1)), np.float32(1))
        history = np.concatenate([clipped, history[:, :-4]], axis=1)
    return all_obs, all_actions


class GdbStub:
    """A minimal client of QEMU's gdbstub (``-gdb tcp:HOST:PORT``, GDB remote serial protocol):
    enough to stop the emulated CPU, read and write its core registers, read memory and let it
    run on. Connecting stops the guest. Registers by number: r0-r12, sp 13, lr 14, pc 15,
    xpsr 16 (QEMU's M-profile layout once the target description was read)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = 5.0):
        import socket

        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._buf = b""
        # register writes (P) need the target description read first (QEMU's rule)
        self.command("qXfer:features:read:target.xml:0,ffff")

    def _byte(self) -> bytes:
        if not self._buf:
            self._buf = self._sock.recv(8192)
            if not self._buf:
                raise ConnectionError("gdbstub closed the connection")
        byte, self._buf = self._buf[:1], self._buf[1:]
        return byte

    def _packet(self) -> str:
        while self._byte() != b"$":
            pass
        body = bytearray()
        while (byte := self._byte()) != b"#":
            body += byte
        self._byte(), self._byte()  # checksum (TCP already checks the bytes)
        self._sock.sendall(b"+")
        return body.decode()

    def command(self, data: str, *, reply: bool = True) -> str | None:
        """Send one packet; return the reply packet after the stub's acknowledgement (stop
        notifications that arrive before it are skipped)."""
        self._sock.sendall(f"${data}#{sum(data.encode()) & 0xFF:02x}".encode())
        while (byte := self._byte()) != b"+":
            if byte == b"$":
                self._buf = b"$" + self._buf
                self._packet()
        return self._packet() if reply else None

    def registers(self) -> list[int]:
        raw = bytes.fromhex(self.command("g"))
        return list(struct.unpack(f"<{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))

    def set_register(self, number: int, value: int) -> None:
        answer = self.command(f"P{number:x}={struct.pack('<I', value & 0xFFFFFFFF).hex()}")
        if answer != "OK":
            raise RuntimeError(f"gdbstub refused to set register {number}: {answer!r}")

    def read_memory(self, address: int, length: int) -> bytes:
        return bytes.fromhex(self.command(f"m{address:x},{length:x}"))

    def cont(self) -> None:
        self.command("c", reply=False)

    def interrupt(self) -> str:
        """Stop the running guest; returns the stop reply."""
        self._sock.sendall(b"\x03")
        return self._packet()

    def close(self) -> None:
        self._sock.close()


def elf_symbols(elf: str | os.PathLike) -> dict[str, int]:
    """Addresses of an ELF's symbols (``arm-none-eabi-nm``), static ones included."""
    import subprocess

    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols[parts[2]] = int(parts[0], 16)
    return symbols

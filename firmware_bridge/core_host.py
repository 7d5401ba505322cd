"""The shared protocol core (``firmware_bridge/core``) compiled for the host, driven from Python.

``HostCore`` runs the very C code the firmware targets run (framing, commands, the two-slot
model store, verify-then-activate) over the file-backed NOR-flash emulator
(``core/host/nor_flash.c``: erase sets 0xFF, programming only clears bits, sector
granularity), with a power-cut knob: let *n* more erase/program operations complete, tear the
next one after some bytes, and leave the flash unpowered. Used by the power-cut bench
(``bench/bench_model_store.py``), tests and host stand-ins.

The library is built with the host C compiler (``cc``) into the firmware build directory on
first use.
"""
from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from nanofly.policy.observation import ACTION_DIM, OBSERVATION_DIM

from . import protocol as P
from .firmware import FIRMWARE_DIR, FirmwareBuildError, export_c_dir

CORE_DIR = FIRMWARE_DIR.parent / "core"
CORE_SOURCES = ("frame.c", "nf_store.c", "nf_core.c", "host/nor_flash.c", "host/core_host.c")
STM32F4_SECTOR_BYTES = 128 * 1024  # the sectors the bridge firmware's slots use (10 and 11)
DEFAULT_MAX_MODEL_BYTES = 56 * 1024


def build_host_core(*, export_c=None) -> Path:
    """The host core's shared library (the shared C core, the NOR-flash emulator and the policy
    runtime), compiled once per set of sources and cached."""
    from nanofly.export.runtime import (RuntimeBuildError, build_cached_library, runtime_headers,
                                        runtime_sources)

    export_c = Path(export_c) if export_c else export_c_dir()
    flags = ["-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
             f"-I{CORE_DIR}", f"-I{CORE_DIR / 'host'}", f"-I{export_c}"]
    try:
        headers = [*sorted(CORE_DIR.glob("*.h")), *sorted(CORE_DIR.glob("host/*.h")),
                   *runtime_headers(export_c)]
        sources = [*(CORE_DIR / s for s in CORE_SOURCES), *runtime_sources(export_c)]
        units = [(src, flags) for src in sources]
        return build_cached_library("libnanofly_core_host", units, depends=headers,
                                    what="the host core")
    except RuntimeBuildError as exc:
        raise FirmwareBuildError(str(exc)) from None


def _load(lib_path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path))
    vp, u8p, u32, i64 = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_uint32, ctypes.c_int64
    lib.nf_host_open.restype = vp
    lib.nf_host_open.argtypes = [ctypes.c_char_p, u32, u32, u32, ctypes.c_uint16, ctypes.c_uint16,
                                 ctypes.c_char_p, ctypes.c_size_t]
    lib.nf_host_boot.argtypes = [vp]
    lib.nf_host_close.argtypes = [vp]
    lib.nf_host_feed.restype = ctypes.c_size_t
    lib.nf_host_feed.argtypes = [vp, ctypes.c_char_p, ctypes.c_size_t, u8p, ctypes.c_size_t]
    lib.nf_host_set_busy.argtypes = [vp, ctypes.c_int]
    lib.nf_host_set_cut.argtypes = [vp, i64, u32]
    lib.nf_host_powered.argtypes = [vp]
    lib.nf_host_stats.argtypes = [vp, ctypes.POINTER(ctypes.c_uint64)]
    lib.nf_host_active.argtypes = [vp, ctypes.POINTER(ctypes.c_uint32)]
    lib.nf_host_infer.argtypes = [vp, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
    lib.nf_host_trace.restype = u32
    lib.nf_host_trace.argtypes = [vp, u8p, ctypes.POINTER(ctypes.c_uint32), u32]
    lib.nf_host_nor_erase.argtypes = [vp, u32]
    lib.nf_host_nor_program.argtypes = [vp, u32, ctypes.c_char_p, u32]
    lib.nf_host_self_check.argtypes = [vp]
    lib.nf_host_staging_state.argtypes = [vp]
    lib.nf_host_staging_state.restype = ctypes.c_uint8
    return lib


_LIBS: dict[Path, ctypes.CDLL] = {}


class HostCore:
    """One board's protocol core and flash image (``flash_path``), booted at construction.

    Flash layout: slot 0 = sectors [0, n), slot 1 = sectors [n, 2n), each ``sector_bytes``;
    the image file is created erased (0xFF) when missing and kept otherwise, so a new
    ``HostCore`` on the same file is a reboot."""

    def __init__(self, flash_path: str | os.PathLike, *, sector_bytes: int = STM32F4_SECTOR_BYTES,
                 sectors_per_slot: int = 1, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                 obs_dim: int = OBSERVATION_DIM, act_dim: int = ACTION_DIM,
                 lib_path: str | os.PathLike | None = None):
        path = Path(lib_path) if lib_path else build_host_core()
        if path not in _LIBS:
            _LIBS[path] = _load(path)
        self._lib = _LIBS[path]
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.slot_stride_bytes = sector_bytes * sectors_per_slot  # slot s starts at s * this
        err = ctypes.create_string_buffer(256)
        self._h = self._lib.nf_host_open(str(flash_path).encode(), sector_bytes, sectors_per_slot,
                                         max_model_bytes, obs_dim, act_dim, err, len(err))
        if not self._h:
            raise OSError(f"flash image: {err.value.decode(errors='replace')}")
        self._out = (ctypes.c_uint8 * 65536)()
        self._decoder = P.FrameDecoder()
        self._seq = 0
        self.boot_slot = self.boot()

    def close(self) -> None:
        if self._h:
            self._lib.nf_host_close(self._h)
            self._h = None

    def __enter__(self) -> HostCore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def boot(self) -> int:
        """Reboot the core over the flash as it is; returns the slot activated or -1."""
        self._decoder = P.FrameDecoder()
        return self._lib.nf_host_boot(self._h)

    # ---- bytes and frames ---------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Bytes in, the reply bytes the core wrote meanwhile out."""
        n = self._lib.nf_host_feed(self._h, bytes(data), len(data), self._out, len(self._out))
        return bytes(self._out[:n])

    def request(self, ftype: int, payload: bytes = b"") -> bytes:
        """Send one request, return the reply payload; error replies raise ``P.DeviceError``."""
        self._seq = (self._seq + 1) & 0xFF
        frames = self._decoder.feed(self.feed(P.encode_frame(ftype, self._seq, payload)))
        if len(frames) != 1:
            raise P.ProtocolError(f"expected one reply to 0x{ftype:02x}, got {len(frames)}")
        f = frames[0]
        if f.type == P.REPLY_ERROR:
            raise P.decode_error(f.payload)
        if f.type != ftype | P.REPLY_FLAG or f.seq != self._seq:
            raise P.ProtocolError(f"reply type 0x{f.type:02x} seq {f.seq} to 0x{ftype:02x} seq {self._seq}")
        return f.payload

    def upload(self, blob: bytes, fmt: int, model_id: int, *, chunk: int = 2044, activate: bool = True) -> None:
        """HELLO, BEGIN, CHUNKs, COMMIT and (optionally) ACTIVATE, as the host client does."""
        self.request(P.CMD_HELLO, P.hello_request())
        crc = P.model_crc(blob)
        (received,) = struct.unpack_from("<I", self.request(P.CMD_BEGIN, P.begin_request(len(blob), crc, fmt, model_id)))
        for offset in range(received, len(blob), chunk):
            self.request(P.CMD_CHUNK, P.chunk_request(offset, blob[offset:offset + chunk]))
        self.request(P.CMD_COMMIT)
        if activate:
            self.request(P.CMD_ACTIVATE, struct.pack("<I", crc))

    # ---- state and knobs ----------------------------------------------------------------
    def active(self) -> dict | None:
        """The active model from the store: slot, crc, model_id, size, format, sequence."""
        info = (ctypes.c_uint32 * 5)()
        slot = self._lib.nf_host_active(self._h, info)
        if slot < 0:
            return None
        return {"slot": slot, "crc": info[0], "model_id": info[1], "size": info[2],
                "format": info[3], "sequence": info[4]}

    def infer(self, obs) -> list[float] | None:
        """Run the model the core told the target to run (None: no model)."""
        o = (ctypes.c_float * self.obs_dim)(*[float(x) for x in obs])
        a = (ctypes.c_float * self.act_dim)()
        if self._lib.nf_host_infer(self._h, o, a) != 0:
            return None
        return list(a)

    def set_busy(self, reason: int) -> None:
        """Answer the core's "may I write flash?" with this reason (0: yes; P.BUSY_*: no)."""
        self._lib.nf_host_set_busy(self._h, reason)

    def cut_power_after(self, ops: int, tear_bytes: int = 0) -> None:
        """Let ``ops`` more erase/program operations complete, tear the next one after
        ``tear_bytes`` bytes, then leave the flash unpowered (negative ops: no cut)."""
        self._lib.nf_host_set_cut(self._h, ops, tear_bytes)

    @property
    def powered(self) -> bool:
        return bool(self._lib.nf_host_powered(self._h))

    def stats(self) -> dict:
        v = (ctypes.c_uint64 * 7)()
        self._lib.nf_host_stats(self._h, v)
        keys = ("flash_ops", "erases", "programs", "bytes_programmed", "reply_bytes_dropped",
                "activations", "slot_bytes")
        return dict(zip(keys, (int(x) for x in v)))

    def flash_trace(self) -> list[tuple[str, int]]:
        """The erase ('E') and program ('P') operations since the last ``cut_power_after``,
        with their lengths in bytes (the first 4 096)."""
        cap = 4096
        kinds, lens = (ctypes.c_uint8 * cap)(), (ctypes.c_uint32 * cap)()
        n = min(int(self._lib.nf_host_trace(self._h, kinds, lens, cap)), cap)
        return [(chr(kinds[i]), int(lens[i])) for i in range(n)]

    def nor_erase(self, sector: int) -> int:
        """Erase one sector of the image directly (0, or a negative NF_NOR_ERR_*)."""
        return int(self._lib.nf_host_nor_erase(self._h, sector))

    def nor_program(self, address: int, data: bytes) -> int:
        """Program bytes at an image address directly (NOR: each byte becomes old & data)."""
        return int(self._lib.nf_host_nor_program(self._h, address, bytes(data), len(data)))

    def self_check(self) -> int:
        return int(self._lib.nf_host_self_check(self._h))

    def staging_state(self) -> str:
        return P.STAGE_NAMES.get(self._lib.nf_host_staging_state(self._h), "?")

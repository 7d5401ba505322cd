"""``nanofly crazyflie sitl``: a host stand-in for a Crazyflie running the nanofly app, for
uploads without a drone.

The app's link and model store code (``crazyflie/src/nanofly_cf_link.c``, the shared protocol
core in ``core/``, the policy runtime) is compiled for this host with the core's file-backed NOR
flash emulator (``core/host/nor_flash.c``), laid out as the STM32F405's flash with the two model
slots in sectors 10 and 11 as on the Crazyflie (``crazyflie/sitl/nanofly_link_sitl.c``). It is
reached through the CRTP peer (``crazyflie_link_sim.CrazyflieLinkPeer``) over cflib's UDP driver:
app-channel packets go into the link, its replies come back as app-channel packets, so
``nanofly flash EXPORT --uri udp://127.0.0.1:PORT`` runs cflib's real client code end to end.

What stands in for the firmware: arming through cflib's supervisor (or platform) request marks
the stand-in armed and the store refuses flash writes (BUSY), as the app does while
``supervisorIsArmed()``; the controller takes a newly activated model right after the request
that activated it (on the Crazyflie: at the next 1 kHz stabilizer step) and loads it with the
policy runtime. The param ``nanofly.modelCrc`` and ``nanofly.modelSource`` follow it.
"""
from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from nanofly.policy.observation import ACTION_DIM, OBSERVATION_DIM

from nanofly.export.runtime import (C_DIR, RuntimeBuildError, build_cached_library, find_compiler,
                                    runtime_headers, runtime_sources)

from .crazyflie_link_sim import CrazyflieLinkPeer

HERE = Path(__file__).resolve().parent
CORE_DIR = HERE / "core"
APP_SRC = HERE / "crazyflie" / "src"
SITL_DIR = HERE / "crazyflie" / "sitl"
LINK_C = APP_SRC / "nanofly_cf_link.c"
SHIM_C = SITL_DIR / "nanofly_link_sitl.c"
FLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror")

# The shipped model's interface (18 state values + 32 actions of history, 4 motors): what the
# app built by default accepts; --default EXPORT_DIR sets it from that export instead.
DEFAULT_OBS_DIM, DEFAULT_ACT_DIM = OBSERVATION_DIM, ACTION_DIM
NF_BUSY_ARMED = 1  # core/protocol.h
MODEL_SOURCES = ("compiled-in", "flash slot")  # nanofly.modelSource 0, 1


def _sources() -> list[Path]:
    core = sorted(CORE_DIR.glob("*.c")) + [CORE_DIR / "host" / "nor_flash.c"]
    return [*core, *runtime_sources(), LINK_C, SHIM_C]


def _headers() -> list[Path]:
    return [*sorted(CORE_DIR.glob("*.h")), *sorted((CORE_DIR / "host").glob("*.h")),
            *runtime_headers(), APP_SRC / "nanofly_cf_link.h", APP_SRC / "nanofly_cf_flash.h"]


def build_library() -> Path:
    """The stand-in's shared library, compiled once per set of sources and cached."""
    cc = find_compiler()
    includes = [CORE_DIR, CORE_DIR / "host", C_DIR, APP_SRC]
    flags = [*FLAGS, *(f"-I{d}" for d in includes)]
    sources = _sources()
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise RuntimeBuildError(f"the stand-in's sources are missing: {', '.join(missing)}")
    return build_cached_library("libnanofly_cf_link_sitl", [(src, flags) for src in sources],
                                depends=_headers(), what="the Crazyflie stand-in", cc=cc)


_WRITE_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t)


@dataclass
class StandInModel:
    crc: int
    source: str      # "compiled-in" or "flash slot"
    slot: int | None
    load_status: int  # the policy runtime's nanofly_model_init result (0 OK, -1 none)


class StandInError(RuntimeError):
    """The stand-in cannot start (flash image unusable, compiler missing)."""


class CrazyflieStandIn:
    """The stand-in (module docstring). ``flash_image``: the emulated flash file (created when
    missing; kept across restarts). ``default_blob``: the compiled-in model's bytes, or None
    for an app built without one. ``port`` 0: a free UDP port.

    ``faults_to_board`` / ``faults_to_host``: ``faultproxy.Fault`` callables applied to the
    app-channel byte stream in each direction (tests: the serial fault proxy's faults on the
    radio path); a fault that asks for a disconnect makes the stand-in drop everything in both
    directions until cflib connects again (cflib's UDP link has no connection to close; a new
    connection starts with a version request), as a Crazyflie out of range."""

    def __init__(self, flash_image: str | os.PathLike, *, default_blob: bytes | None = None,
                 obs_dim: int = DEFAULT_OBS_DIM, act_dim: int = DEFAULT_ACT_DIM,
                 host: str = "127.0.0.1", port: int = 0):
        from . import protocol as P

        self.flash_image = Path(flash_image)
        self._lib = ctypes.CDLL(str(build_library()))
        lib = self._lib
        lib.nf_link_sitl_start.restype = ctypes.c_int
        lib.nf_link_sitl_start.argtypes = [ctypes.c_char_p, _WRITE_FN, ctypes.c_void_p, ctypes.c_uint32,
                                           ctypes.c_uint32, ctypes.c_uint16, ctypes.c_uint16,
                                           ctypes.c_char_p, ctypes.c_size_t]
        lib.nf_link_sitl_feed.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.nf_link_sitl_set_busy.argtypes = [ctypes.c_int]
        lib.nf_link_sitl_controller_step.restype = ctypes.c_int
        lib.nf_link_sitl_model.argtypes = [ctypes.POINTER(ctypes.c_uint32)] + [ctypes.POINTER(ctypes.c_int)] * 3
        self._lock = threading.Lock()
        self.faults_to_board: list = []
        self.faults_to_host: list = []
        self._cut_at: int | None = None  # peer.connections when a fault cut the link
        self.peer = CrazyflieLinkPeer(host=host, port=port, app_channel_handler=self._on_app_packet)
        self._write_cb = _WRITE_FN(self._on_reply)  # kept: C holds the pointer
        self._default = ctypes.create_string_buffer(bytes(default_blob or b""), max(1, len(default_blob or b"")))
        err = ctypes.create_string_buffer(256)
        crc = P.model_crc(default_blob) if default_blob else 0
        rc = lib.nf_link_sitl_start(str(self.flash_image).encode(), self._write_cb,
                                    ctypes.cast(self._default, ctypes.c_void_p) if default_blob else None,
                                    len(default_blob or b""), crc, obs_dim, act_dim, err, len(err))
        if rc == -2:
            self.peer.close()
            raise StandInError(f"--flash-image {self.flash_image}: {err.value.decode(errors='replace')}")
        self.boot_slot = rc if rc >= 0 else None
        self._controller_step()

    @property
    def uri(self) -> str:
        return self.peer.uri

    def start(self) -> "CrazyflieStandIn":
        self.peer.start()
        return self

    def close(self) -> None:
        self.peer.close()
        with self._lock:
            if self._lib is not None:
                self._lib.nf_link_sitl_stop()
                self._lib = None

    def __enter__(self) -> "CrazyflieStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def model(self) -> StandInModel:
        crc, source, slot, status = ctypes.c_uint32(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        with self._lock:
            self._lib.nf_link_sitl_model(ctypes.byref(crc), ctypes.byref(source), ctypes.byref(slot),
                                         ctypes.byref(status))
        return StandInModel(crc=crc.value, source=MODEL_SOURCES[source.value],
                            slot=slot.value if source.value == 1 else None, load_status=status.value)

    def set_faults(self, to_board=(), to_host=()) -> None:
        with self._lock:
            self.faults_to_board, self.faults_to_host = list(to_board), list(to_host)
            self._cut_at = None

    def _damage(self, faults, data: bytes) -> bytes:
        if self._cut_at is not None:
            if self.peer.connections <= self._cut_at:
                return b""
            self._cut_at = None
        for fault in faults:
            data = fault(data)
        if any(getattr(f, "disconnect", False) for f in faults):
            for f in faults:
                f.disconnect = False
            self._cut_at = self.peer.connections
        return data

    # the peer's thread
    def _on_reply(self, transport: int, data, length: int) -> None:
        out = self._damage(self.faults_to_host, ctypes.string_at(data, length))
        if out:
            self.peer.send_app(out)

    def _on_app_packet(self, payload: bytes) -> None:
        with self._lock:
            payload = self._damage(self.faults_to_board, payload)
            if not payload:
                return
            if self._lib is None:
                return
            self._lib.nf_link_sitl_set_busy(NF_BUSY_ARMED if self.peer.state.armed else 0)
            self._lib.nf_link_sitl_feed(payload, len(payload))
        self._controller_step()

    def _controller_step(self) -> None:
        with self._lock:
            if self._lib is None or not self._lib.nf_link_sitl_controller_step():
                return
        m = self.model()
        values = self.peer.param_values
        values["nanofly.modelCrc"] = m.crc
        if "nanofly.modelSource" in values:
            values["nanofly.modelSource"] = MODEL_SOURCES.index(m.source)

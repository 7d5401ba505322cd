"""The C runtime on the host: compile it with gcc (cached by source hash) and call it via ctypes.

The shared library is built from the very runtime sources that ship in every export directory
(``runtime_sources()``), with the plain-C kernels (bit-identical to the Cortex-M4 assembly). It is
cached under ``$NANOFLY_CACHE`` or ``~/.cache/nanofly`` keyed by the SHA-256 of the sources, the
compiler version and the flags, and written atomically so concurrent builds are safe.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

C_DIR = Path(__file__).resolve().parent / "c"
RUNTIME_H = C_DIR / "nanofly_policy.h"
RUNTIME_MK = C_DIR / "nanofly_runtime.mk"
DRIVER_C = C_DIR / "nanofly_run.c"


def runtime_sources(c_dir: Path = C_DIR) -> tuple[Path, ...]:
    """The runtime's C sources in ``c_dir`` (the package's export/c or an export directory), as
    its ``nanofly_runtime.mk`` lists them (``NANOFLY_RUNTIME_SOURCES := a.c \\ kernels/b.c``)."""
    mk = Path(c_dir) / RUNTIME_MK.name
    try:
        text = mk.read_text().replace("\\\n", " ")
    except OSError as exc:
        raise RuntimeBuildError(f"{mk}: cannot read the runtime's source list ({exc.strerror}); "
                                f"point at a folder holding the nanofly C runtime") from exc
    for line in text.splitlines():
        name, sep, value = line.partition(":=")
        if sep and name.strip() == "NANOFLY_RUNTIME_SOURCES":
            return tuple(Path(c_dir) / v for v in value.split())
    raise RuntimeBuildError(f"{mk}: no NANOFLY_RUNTIME_SOURCES line")


def runtime_headers(c_dir: Path = C_DIR) -> tuple[Path, ...]:
    """The public header and the kernels' internal ones in ``c_dir``."""
    return (Path(c_dir) / RUNTIME_H.name, *sorted((Path(c_dir) / "kernels").glob("*.h")))


def runtime_files(c_dir: Path = C_DIR) -> tuple[Path, ...]:
    """Every file of the runtime in ``c_dir``: headers, sources and the source list (what an
    export directory ships)."""
    return (*runtime_headers(c_dir), *runtime_sources(c_dir), Path(c_dir) / RUNTIME_MK.name)


# Strict flags: the runtime must compile cleanly with these.
STRICT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g")


class RuntimeBuildError(RuntimeError):
    """The C compiler is missing or failed."""


def cache_dir() -> Path:
    root = os.environ.get("NANOFLY_CACHE") or os.path.join(Path.home(), ".cache", "nanofly")
    return Path(root)


def find_compiler(cc: str | None = None) -> str:
    cc = cc or os.environ.get("CC") or "gcc"
    path = shutil.which(cc)
    if path is None:
        raise RuntimeBuildError(f"C compiler {cc!r} not found; install gcc (Debian: apt-get "
                                f"install gcc) or set CC")
    return path


def _compiler_id(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.stdout else cc


def _build(kind: str, sources: list[Path], flags: list[str], cc: str | None = None) -> Path:
    """Compile ``sources`` into a cached artifact (``kind`` is 'so' or 'exe')."""
    cc = find_compiler(cc)
    h = hashlib.sha256()
    for part in [_compiler_id(cc), kind, *flags]:
        h.update(part.encode() + b"\0")
    for src in [*sources, *runtime_headers()]:
        h.update(src.read_bytes())
    digest = h.hexdigest()[:16]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (f"libnanofly_policy-{digest}.so" if kind == "so"
                        else f"nanofly_run-{digest}")
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
    os.close(fd)
    cmd = [cc, *flags, f"-I{C_DIR}", *(str(s) for s in sources), "-o", tmp, "-lm"]
    if kind == "so":
        cmd[1:1] = ["-shared", "-fPIC"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeBuildError(f"compiling the C runtime failed:\n{' '.join(cmd)}\n"
                                    f"{res.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build_cached_library(stem: str, units: list[tuple[Path, list[str]]], *,
                         depends: list[Path] = (), key: tuple[str, ...] = (), what: str,
                         cc: str | None = None, timeout_s: float = 300) -> Path:
    """A host shared library compiled from ``units`` (source, its compiler flags), built once
    and kept in the cache as ``{stem}-{hash}.so``. The hash covers the compiler, every unit's
    path, flags and bytes, the bytes of ``depends`` (headers) and ``key`` (e.g. a firmware
    tree's identity), so any change builds a new library and a stale one is never loaded.
    Built in a temporary folder beside the target and renamed into place, so concurrent
    builders never see half a file. ``what`` names the library in errors."""
    cc = find_compiler(cc)
    h = hashlib.sha256()
    for part in (_compiler_id(cc), *key):
        h.update(part.encode() + b"\0")
    for src, flags in units:
        h.update("\0".join([str(src), *flags]).encode() + b"\0" + Path(src).read_bytes())
    for dep in depends:
        h.update(str(dep).encode() + b"\0" + Path(dep).read_bytes())
    out_dir = cache_dir()
    target = out_dir / f"{stem}-{h.hexdigest()[:16]}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{stem}-", dir=out_dir) as tmp:
        objs = []
        for i, (src, flags) in enumerate(units):
            obj = Path(tmp) / f"{i}-{Path(src).stem}.o"
            cmd = [cc, *flags, "-fPIC", "-c", str(src), "-o", str(obj)]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            if res.returncode != 0:
                raise RuntimeBuildError(f"compiling {Path(src).name} for {what} failed:\n"
                                        f"{' '.join(cmd)}\n{res.stderr.strip()[-3000:]}")
            objs.append(str(obj))
        so = Path(tmp) / target.name
        cmd = [cc, "-shared", "-o", str(so), *objs, "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if res.returncode != 0:
            raise RuntimeBuildError(f"linking {what} failed:\n{' '.join(cmd)}\n"
                                    f"{res.stderr.strip()[-3000:]}")
        os.replace(so, target)
    return target


def _host_fma_flags() -> list[str]:
    """-mfma where the x86 CPU has FMA: fmaf becomes one instruction instead of a libm call
    (several times faster c-f32). Results do not change: the runtime only fuses where it calls
    fmaf explicitly, and -ffp-contract=off stops the compiler fusing anything else."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return []
    return ["-mfma"] if " fma " in f" {flags} " and os.uname().machine == "x86_64" else []


def build_shared_library(extra_flags: tuple[str, ...] = (), cc: str | None = None) -> Path:
    """The host runtime as a shared library (strict flags, -O2)."""
    return _build("so", list(runtime_sources()), [*STRICT_FLAGS, "-O2", "-ffp-contract=off",
                                      *_host_fma_flags(), *extra_flags], cc)


def build_driver(sanitize: bool = False, cc: str | None = None) -> Path:
    """The ``nanofly_run`` host driver, optionally with ASan + UBSan."""
    flags = [*STRICT_FLAGS, "-O1" if sanitize else "-O2", "-ffp-contract=off",
             *(SANITIZE_FLAGS if sanitize else ())]
    return _build("exe", [*runtime_sources(), DRIVER_C], flags, cc)


class _Lib:
    """ctypes bindings (one per library path)."""
    _cache: dict[Path, "_Lib"] = {}

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        vp, u32 = ctypes.c_void_p, ctypes.c_uint32
        lib.nanofly_model_init.argtypes = [vp, vp, u32]
        lib.nanofly_model_init.restype = ctypes.c_int
        lib.nanofly_policy_act_batch.argtypes = [vp, vp, vp, u32]
        lib.nanofly_policy_act_batch.restype = None
        lib.nanofly_crc32.argtypes = [u32, vp, ctypes.c_size_t]
        lib.nanofly_crc32.restype = u32
        for name in ("nanofly_model_input_dim", "nanofly_model_output_dim",
                     "nanofly_model_format"):
            getattr(lib, name).argtypes = [vp]
            getattr(lib, name).restype = u32
        lib.nanofly_tanhf.argtypes = [ctypes.c_float]
        lib.nanofly_tanhf.restype = ctypes.c_float
        lib.nanofly_strerror.argtypes = [ctypes.c_int]
        lib.nanofly_strerror.restype = ctypes.c_char_p
        self.lib = lib
        self.path = path

    @classmethod
    def get(cls, path: Path | None = None) -> "_Lib":
        path = Path(path) if path else build_shared_library()
        if path not in cls._cache:
            cls._cache[path] = _Lib(path)
        return cls._cache[path]


class CModelError(ValueError):
    """``nanofly_model_init`` refused a blob; ``code`` is the negative NANOFLY_ERR_* value."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} (nanofly_model_init returned {code})")
        self.code = code


class CModel:
    """A blob loaded into the host C runtime. ``model(obs)`` runs ``nanofly_policy_act`` per row."""

    # nanofly_model is ~80 bytes on a 64-bit host; a generous, 16-aligned buffer holds it.
    _MODEL_BYTES = 256

    def __init__(self, blob: bytes, library: Path | None = None, *, offset: int = 0):
        self._lib = _Lib.get(library)
        blob = bytes(blob)
        # uint32 storage keeps the blob 4-byte aligned (offset != 0 tests the alignment check)
        self._storage = np.zeros((len(blob) + offset + 7) // 4 + 1, np.uint32)
        base = self._storage.ctypes.data
        ctypes.memmove(base + offset, blob, len(blob))
        self._model = ctypes.create_string_buffer(self._MODEL_BYTES)
        rc = self._lib.lib.nanofly_model_init(self._model, base + offset, len(blob))
        if rc != 0:
            raise CModelError(rc, self._lib.lib.nanofly_strerror(rc).decode())
        lib = self._lib.lib
        self.input_dim = lib.nanofly_model_input_dim(self._model)
        self.output_dim = lib.nanofly_model_output_dim(self._model)
        self.format = lib.nanofly_model_format(self._model)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.input_dim:
            raise ValueError(f"observations must have shape (N, {self.input_dim}), "
                             f"got {obs.shape}")
        out = np.empty((obs.shape[0], self.output_dim), np.float32)
        if obs.shape[0]:
            self._lib.lib.nanofly_policy_act_batch(self._model, obs.ctypes.data,
                                                   out.ctypes.data, obs.shape[0])
        return out


def init_error_code(blob: bytes, library: Path | None = None, *, offset: int = 0) -> int:
    """What ``nanofly_model_init`` returns for ``blob`` (0 = accepted)."""
    try:
        CModel(blob, library, offset=offset)
    except CModelError as exc:
        return exc.code
    return 0


def c_tanh(x: np.ndarray, library: Path | None = None) -> np.ndarray:
    f = _Lib.get(library).lib.nanofly_tanhf
    return np.array([f(float(v)) for v in np.asarray(x, np.float32).ravel()], np.float32)


def c_crc32(data: bytes, library: Path | None = None) -> int:
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    return _Lib.get(library).lib.nanofly_crc32(0, buf, len(data))

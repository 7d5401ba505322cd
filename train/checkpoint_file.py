"""The training checkpoint file (``RUN_DIR/checkpoint.npz``): data only, never code.

A checkpoint (``Trainer.checkpoint()``) is a tree of dicts, lists, numbers, strings, bools,
None and NumPy arrays. On disk it is an uncompressed ``.npz`` archive (a zip of ``.npy``
members, which ``numpy.load(..., allow_pickle=False)`` also reads) holding:

- ``checkpoint.json``: ``{"format": "nanofly-checkpoint", "format_version": 1, "checkpoint":
  TREE}`` where each array of the tree is ``{"$array": "arrays/<n>.npy"}`` and each non-finite
  float ``{"$float": "nan" | "inf" | "-inf"}`` (so the JSON is strict);
- ``arrays/<n>.npy``: the arrays, plain numeric dtypes only.

Why not pickle: unpickling runs whatever the file says, and run directories are shared
(the repository itself ships some). Reading here parses JSON and ``.npy`` headers only, and
before allocating an array checks that its bytes are really in the file (stored members whose
sizes add up to no more than the file), so a crafted file can neither run code nor make the
reader allocate more memory than the file's own size.

Checkpoints of nanofly versions that wrote ``checkpoint.pkl`` (a pickle) are read only by
``load_legacy_pickle`` when the user says they trust the file (``--trust-checkpoint``).
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nanofly.policy.file import atomic_write

CHECKPOINT_NAME = "checkpoint.npz"
LEGACY_CHECKPOINT_NAME = "checkpoint.pkl"  # the pickle of earlier versions: never read untrusted
CHECKPOINT_FORMAT = "nanofly-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_META = "checkpoint.json"
# Array dtypes a checkpoint may hold (numbers and bools: never objects)
_DTYPE_KINDS = "biuf"


class CheckpointFileError(ValueError):
    """A checkpoint file is missing, corrupt, or not a nanofly checkpoint."""


# ----------------------------------------------------------------------------------- writing
def _encode(value: Any, arrays: list[tuple[str, np.ndarray]], where: str) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint{where}: dict key {key!r} is not a string")
            out[key] = _encode(item, arrays, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(item, arrays, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _DTYPE_KINDS or value.dtype.fields is not None:
            raise TypeError(f"checkpoint{where}: arrays of dtype {value.dtype} are not stored")
        name = f"arrays/{len(arrays)}.npy"
        arrays.append((name, value))
        return {"$array": name}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}  # 'nan', 'inf', '-inf'
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint{where}: cannot store a {type(value).__name__}")


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` (``Trainer.checkpoint()``) to ``path`` atomically (the old file
    stays until the new one is complete). The arrays are streamed into the file, not copied."""
    path = Path(path)
    arrays: list[tuple[str, np.ndarray]] = []
    meta = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
            "checkpoint": _encode(checkpoint, arrays, "")}
    text = json.dumps(meta, allow_nan=False, separators=(",", ":"))

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.writestr(_META, text)
            for name, array in arrays:
                # force_zip64: the size is not declared in advance, and buffers pass 2 GiB
                with archive.open(name, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array),
                                              allow_pickle=False)

    atomic_write(path, write)
    return path


# ----------------------------------------------------------------------------------- reading
class _Reader:
    def __init__(self, path: Path, archive: zipfile.ZipFile, file_size: int):
        self.path, self.archive, self.file_size = path, archive, file_size
        self.members = {info.filename: info for info in archive.infolist()}
        self.used: set[str] = set()
        self.bytes_read = 0

    def fail(self, why: str) -> CheckpointFileError:
        return CheckpointFileError(f"{self.path}: not a usable nanofly checkpoint ({why})")

    def member(self, name: str) -> zipfile.ZipInfo:
        """The member ``name``, once only, checked to be stored in the file uncompressed: its
        bytes then exist in the file, so what is read from all members together is bounded by
        the file's size."""
        info = self.members.get(name)
        if info is None:
            raise self.fail(f"member {name!r} missing")
        if name in self.used:
            raise self.fail(f"member {name!r} used twice")
        self.used.add(name)
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise self.fail(f"member {name!r} is compressed")
        self.bytes_read += info.file_size
        if self.bytes_read > self.file_size:
            raise self.fail("members larger than the file")
        return info

    def array(self, name: Any) -> np.ndarray:
        if not isinstance(name, str):
            raise self.fail(f"array reference {name!r} is not a member name")
        info = self.member(name)
        with self.archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise self.fail(f"{name}: .npy version {version}")
            if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype:
                raise self.fail(f"{name}: dtype {dtype} (numbers only)")
            if any(d < 0 for d in shape):
                raise self.fail(f"{name}: shape {shape}")
            n_bytes = math.prod(shape) * dtype.itemsize
            if n_bytes != info.file_size - f.tell():
                raise self.fail(f"{name}: shape {shape} does not match its {info.file_size} bytes")
        with self.archive.open(info) as f:  # the sizes agree: numpy's reader allocates n_bytes
            return np.lib.format.read_array(f, allow_pickle=False)

    def decode(self, value: Any, depth: int = 0) -> Any:
        if depth > 32:
            raise self.fail("nested too deeply")
        if isinstance(value, dict):
            if set(value) == {"$array"}:
                return self.array(value["$array"])
            if set(value) == {"$float"}:
                if value["$float"] not in ("nan", "inf", "-inf"):
                    raise self.fail(f"bad number {value['$float']!r}")
                return float(value["$float"])
            return {k: self.decode(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.decode(v, depth + 1) for v in value]
        return value


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``. Raises ``CheckpointFileError`` (one
    line saying what is wrong) for a missing, corrupt or foreign file; never runs code from it."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            reader = _Reader(path, archive, file_size)
            info = reader.member(_META)
            with archive.open(info) as f:
                meta = json.loads(f.read().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
                raise reader.fail("no nanofly-checkpoint format tag")
            if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
                raise reader.fail(f"format version {meta.get('format_version')!r}, this nanofly "
                                  f"reads {CHECKPOINT_FORMAT_VERSION}")
            checkpoint = reader.decode(meta.get("checkpoint"))
    except CheckpointFileError:
        raise
    except FileNotFoundError:
        raise CheckpointFileError(f"{path}: no such checkpoint file") from None
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, UnicodeDecodeError,
            ValueError, RecursionError, MemoryError) as exc:
        raise CheckpointFileError(f"{path}: not a readable nanofly checkpoint "
                                  f"({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(f"{path}: not a usable nanofly checkpoint (no checkpoint table)")
    return checkpoint


def load_legacy_pickle(path: str | Path) -> dict[str, Any]:
    """Read a ``checkpoint.pkl`` of an earlier nanofly. UNSAFE: unpickling runs any code the
    file holds; only for files the user made and says they trust (``--trust-checkpoint``)."""
    import pickle

    path = Path(path)
    try:
        with open(path, "rb") as f:
            checkpoint = pickle.load(f)  # noqa: S301 - the user vouched for this file
    except Exception as exc:  # a pickle can raise anything
        raise CheckpointFileError(f"{path}: not a readable checkpoint pickle "
                                  f"({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(f"{path}: not a nanofly checkpoint")
    return checkpoint

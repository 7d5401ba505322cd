"""Writing the policy file (``policy.pt``) without importing torch.

``torch.load`` reads what this module writes: a zip archive (stored, not compressed) holding
``data.pkl``, a protocol-2 pickle of the payload in which every tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`` with the
storage a persistent id ``("storage", torch.FloatStorage, key, "cpu", numel)``, and one record
``data/<key>`` per storage with its raw little-endian bytes, 64-byte aligned (so
``torch.load(mmap=True)`` works too), plus the ``version``, ``byteorder``, ``.format_version``
and ``.storage_alignment`` records. This is the layout torch 2.x's own ``torch.save`` writes
(checked against torch 2.13's output in tests/test_policy_file.py), and everything in it is on
``torch.load(weights_only=True)``'s allow-list.

Why without torch: importing torch takes over a second, a noticeable part of a whole training
run, and the trainer needs torch for nothing else (its networks are numba kernels). Reading a
policy file and running the actor use torch (``nanofly.policy.actor``, which imports this
module; this module never imports it).

Also here: ``atomic_write`` / ``fsync_directory``, the whole-or-nothing file writes that every
stage's artifacts (checkpoints, export directories) use.
"""
from __future__ import annotations

import collections
import errno
import hashlib
import io
import math
import os
import pickle
import secrets
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

POLICY_FORMAT = "nanofly-policy"
POLICY_FORMAT_VERSION = 1
SUPPORTED_ACTIVATIONS = ("tanh",)


class PolicyFileError(ValueError):
    """A policy file is missing, corrupt, or describes something nanofly cannot run."""


@dataclass
class ActorWeights:
    """An actor's weights as NumPy arrays, keyed as ``nanofly.policy.actor.Actor``'s state_dict
    (``net.0.weight`` (out, in), ``net.0.bias`` (out,), ``net.2.weight``, ...), float32."""

    layer_sizes: list[int]
    state_dict: dict[str, np.ndarray]
    activation: str = "tanh"

    @classmethod
    def of(cls, actor: Any) -> "ActorWeights":
        """``actor`` as weights: an ``ActorWeights`` itself, or a torch ``Actor`` (copied)."""
        if isinstance(actor, cls):
            return actor
        if not all(hasattr(actor, a) for a in ("state_dict", "layer_sizes", "activation")):
            raise TypeError(f"expected ActorWeights or a nanofly Actor, got {type(actor).__name__}")
        return cls(list(actor.layer_sizes),
                   {k: v.detach().cpu().numpy().copy() for k, v in actor.state_dict().items()},
                   actor.activation)


# Bounds on what a policy file may describe, checked before anything is allocated: generous for
# any actor nanofly trains (146-64-64-4: 13 828 parameters), small enough that a crafted file
# cannot make a reader allocate more than MAX_POLICY_PARAMETERS float32 values (200 MB).
MAX_POLICY_LAYERS = 16  # linear layers
MAX_LAYER_WIDTH = 65_536
MAX_POLICY_PARAMETERS = 50_000_000


def check_layer_sizes(layer_sizes: Any, where: str = "") -> list[int]:
    """``layer_sizes`` ([input, hidden..., output]) as ints, or ``PolicyFileError`` when it is
    not a list of 2 to MAX_POLICY_LAYERS + 1 integers in [1, MAX_LAYER_WIDTH] describing at
    most MAX_POLICY_PARAMETERS parameters. ``where`` prefixes the message (e.g. the path)."""
    if (not isinstance(layer_sizes, (list, tuple))
            or not 2 <= len(layer_sizes) <= MAX_POLICY_LAYERS + 1
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in layer_sizes)
            or not all(1 <= s <= MAX_LAYER_WIDTH for s in layer_sizes)):
        raise PolicyFileError(
            f"{where}layer_sizes must be a list of 2 to {MAX_POLICY_LAYERS + 1} integers from 1 "
            f"to {MAX_LAYER_WIDTH} ([input, hidden..., output]), got {str(layer_sizes)[:80]}")
    n_params = sum(a * b + b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    if n_params > MAX_POLICY_PARAMETERS:
        raise PolicyFileError(f"{where}layer_sizes {list(layer_sizes)} describe {n_params} "
                              f"parameters; nanofly reads at most {MAX_POLICY_PARAMETERS}")
    return [int(s) for s in layer_sizes]


def parameter_shapes(layer_sizes) -> dict[str, tuple[int, ...]]:
    """The actor's parameters by state_dict name, in order, with their shapes: ``net.0.weight``
    (out, in), ``net.0.bias`` (out,), ``net.2.weight``, ... (``Actor``'s ``nn.Sequential`` of
    Linear and Tanh layers)."""
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
        shapes[f"net.{2 * i}.weight"] = (int(fan_out), int(fan_in))
        shapes[f"net.{2 * i}.bias"] = (int(fan_out),)
    return shapes


def git_commit(default: str = "unknown") -> str:
    """The current git commit of the nanofly source tree, or ``default`` outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return default


def save_policy(path: str | os.PathLike, actor: Any, *, observation: dict[str, Any],
                action: dict[str, Any], vehicle: dict[str, Any], mdp: dict[str, Any] | None = None,
                train_config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> Path:
    """Write a self-describing policy file atomically (temp file + rename).

    ``actor``: an ``ActorWeights`` or a torch ``nanofly.policy.actor.Actor``.
    ``observation``: the actor observation layout, as
    ``nanofly.policy.observation.observation_record(history_length)`` gives it (dim,
    history_length, layout: [[part name, size], ...]).
    ``action``: the action mapping, e.g. ``{"dim": 4, "mapping": "...", "hover_action": 0.334}``.
    ``vehicle``: ``{"preset": name, "params": {...}}`` (the preset as plain data).
    """
    path = Path(path)
    weights = ActorWeights.of(actor)
    if weights.activation not in SUPPORTED_ACTIVATIONS:
        raise PolicyFileError(f"refusing to save: activation {weights.activation!r}; nanofly runs "
                              f"{SUPPORTED_ACTIVATIONS} MLPs")
    sizes = check_layer_sizes([int(s) for s in weights.layer_sizes], "refusing to save: ")
    expected = parameter_shapes(sizes)
    if set(weights.state_dict) != set(expected):
        raise PolicyFileError(f"refusing to save: actor parameters {sorted(weights.state_dict)} "
                              f"do not match layer_sizes {sizes} (expected {sorted(expected)})")
    for name, values in weights.state_dict.items():
        if np.shape(values) != expected[name]:
            raise PolicyFileError(f"refusing to save: actor parameter {name!r} has shape "
                                  f"{np.shape(values)}, layer_sizes {sizes} imply {expected[name]}")
        if not np.isfinite(values).all():
            raise PolicyFileError(f"refusing to save: actor parameter {name!r} has NaN or Inf")
    payload = {
        "format": POLICY_FORMAT,
        "format_version": POLICY_FORMAT_VERSION,
        "actor": {
            "layer_sizes": sizes,
            "activation": weights.activation,
            "output_activation": "tanh",
            "state_dict": {k: np.array(v, dtype=np.float32) for k, v in weights.state_dict.items()},
        },
        "observation": observation,
        "action": action,
        "vehicle": vehicle,
        "mdp": mdp or {},
        "train_config": train_config or {},
        "git_commit": git_commit(),
        "metrics": metrics or {},
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, torch_file_bytes(payload))
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Create ``path`` whole or not at all: ``write(f)`` fills a temporary file beside it, which
    is flushed to disk, then renamed over it, and the directory is synced so that the rename
    survives a crash too (a crash leaves the old file or none, never a partial one). The file
    gets the permissions a plain ``open`` gives (0666 less the umask), not a temporary file's
    0600."""
    path = Path(path)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty, uniquely named hidden file next to ``path``, opened for writing; created
    with mode 0666 so that the umask (and a default ACL) decide, as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk. File systems that
    cannot sync a directory (EINVAL: some network and FUSE ones) are left as they are."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # no directory handles here (Windows)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


# ----------------------------------------------------------------------- torch's file layout
_STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
                  np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
                  np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}
_ALIGNMENT = 64  # torch's .storage_alignment: storages start at multiples of it in the file


class _Global:
    """A name pickled as a GLOBAL reference (module.name) without importing the module."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable; torch.load calls the real one
        raise TypeError(f"{self.module}.{self.name} is a reference for pickling only")


class _Storage:
    def __init__(self, key: str, storage_type: _Global, array: np.ndarray):
        self.key, self.storage_type, self.array = key, storage_type, array


class _TorchPickler(pickle._Pickler):  # the Python pickler: its dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(file, protocol=2)  # torch.save's default protocol
        self.storages: list[_Storage] = []
        self._rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
        self._types = {dt: _Global("torch", name) for dt, name in _STORAGE_TYPES.items()}

    def _save_global_ref(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_Global] = _save_global_ref

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", int(obj.array.size))
        return None

    def reducer_override(self, obj):
        if not isinstance(obj, np.ndarray):
            return NotImplemented
        if obj.dtype not in _STORAGE_TYPES:
            raise PolicyFileError(f"cannot store an array of dtype {obj.dtype} in a policy file")
        array = np.ascontiguousarray(obj).astype(obj.dtype.newbyteorder("<"), copy=False)
        storage = _Storage(str(len(self.storages)), self._types[obj.dtype], array)
        self.storages.append(storage)
        shape = tuple(int(s) for s in array.shape)
        # contiguous row-major strides in elements, as torch counts them
        stride = tuple(int(math.prod(shape[i + 1:])) for i in range(len(shape)))
        return (self._rebuild, (storage, 0, shape, stride, False, collections.OrderedDict()))


def _plain(obj: Any) -> Any:
    """NumPy scalars (in metrics, say) as Python numbers: torch.load(weights_only=True) refuses
    NumPy's scalar types."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def torch_file_bytes(payload: Any) -> bytes:
    """``payload`` (dicts, lists, tuples, str, int, float, bool, None, NumPy scalars, which become
    Python numbers, and NumPy arrays, which become tensors) in ``torch.save``'s zip layout, as
    bytes."""
    pkl = io.BytesIO()
    pickler = _TorchPickler(pkl)
    pickler.dump(_plain(payload))
    records: list[tuple[str, bytes]] = [("data.pkl", pkl.getvalue()), (".format_version", b"1"),
                                        (".storage_alignment", str(_ALIGNMENT).encode()),
                                        ("byteorder", b"little")]
    records += [(f"data/{s.key}", s.array.tobytes()) for s in pickler.storages]
    records.append(("version", b"3\n"))
    # torch writes a random id here; a digest of the contents keeps equal payloads equal bytes
    digest = hashlib.sha256(b"".join(data for _, data in records)).digest()
    records.append((".data/serialization_id", str(int.from_bytes(digest[:16], "little")).encode()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in records:
            info = zipfile.ZipInfo(f"archive/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            # local header: 30 bytes + name + extra; pad the extra field (id "FB", as torch
            # does) so that the record's bytes start on a 64-byte boundary
            header = 30 + len(info.filename.encode()) + 4
            pad = -(out.tell() + header) % _ALIGNMENT
            info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
            archive.writestr(info, data)
    return out.getvalue()

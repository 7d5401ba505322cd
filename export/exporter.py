"""``export_policy``: policy.pt -> export directory (ONNX, C blobs, C runtime, manifest).

Everything is computed in memory first (load and check the policy, calibrate, quantize, measure
every form against the float actor); only then are the files written, into a temporary
directory next to the target that is renamed into place. A failed export leaves nothing behind
and an existing export is replaced only by a complete new one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import blob as blobfmt
from .calibration import CalibrationUnavailable, collect_calibration_observations
from .runtime import C_DIR, CModel, RuntimeBuildError, runtime_files

EXPORT_FORMAT = "nanofly-export"
EXPORT_FORMAT_VERSION = 1
# Accuracy bounds (largest |action - torch action|), recorded next to the measured errors.
BOUND_F32 = 1e-5
BOUND_INT8 = 0.02
DEFAULT_CALIBRATION = 8192
DEFAULT_EVALUATION = 10_000

# The C runtime's files, as paths relative to the export directory (kernels/ is a subfolder).
RUNTIME_FILES = tuple(p.relative_to(C_DIR).as_posix() for p in runtime_files())
FILES = ("policy.onnx", "policy_f32.bin", "policy_f32.h", "policy_f32.c", "policy_int8.bin",
         "policy_int8.h", "policy_int8.c", *RUNTIME_FILES, "manifest.json")


class ExportError(ValueError):
    """The export was refused; the message says what was wrong and how to fix it."""


# ---------------------------------------------------------------------------------------------
# inputs

def load_actor(policy_path) -> tuple[Any, dict, list[np.ndarray], list[np.ndarray]]:
    """Load and check a policy file: ``(actor, payload, weights, biases)`` (float32 numpy)."""
    from nanofly.policy.actor import PolicyFileError, load_policy
    try:
        actor, payload = load_policy(policy_path)
    except PolicyFileError as exc:
        detail = str(exc).removeprefix(f"{policy_path}: ")  # the path once, in front
        raise ExportError(f"cannot export {policy_path}: {detail}") from exc
    except (KeyError, TypeError, RuntimeError) as exc:  # malformed actor spec
        raise ExportError(f"cannot export {policy_path}: malformed actor description "
                          f"({type(exc).__name__}: {exc})") from exc
    weights = [lin.weight.detach().numpy().astype(np.float32) for lin in actor.linear_layers()]
    biases = [lin.bias.detach().numpy().astype(np.float32) for lin in actor.linear_layers()]
    sizes = list(actor.layer_sizes)
    try:
        blobfmt.check_dims(sizes)
    except blobfmt.BlobError as exc:
        raise ExportError(f"cannot export {policy_path}: architecture {'-'.join(map(str, sizes))} "
                          f"is not supported by the C runtime: {exc}. Use at most "
                          f"{blobfmt.MAX_LAYERS} layers, <= {blobfmt.MAX_INPUT} inputs and "
                          f"<= {blobfmt.MAX_WIDTH} units per layer.") from exc
    for i, (w, b) in enumerate(zip(weights, biases)):
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ExportError(f"cannot export {policy_path}: layer {i} has NaN or Inf weights")
    return actor, payload, weights, biases


def recorded_input_multiplier(payload: dict, n_inputs: int, policy_path) -> np.ndarray | None:
    """The int8 input multipliers a policy trained on the int8 grid recorded
    (``payload["extra"]["int8_grid"]``), checked; None for other policies."""
    grid = (payload.get("extra") or {}).get("int8_grid")
    if grid is None:
        return None
    try:
        mult = np.asarray(grid["input_multiplier"], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"cannot export {policy_path}: malformed int8_grid ({exc!r})") from exc
    exponents = np.log2(mult) if mult.ndim == 1 and np.all(mult > 0) else None
    if (mult.shape != (n_inputs,) or exponents is None or not np.all(np.isfinite(exponents))
            or not np.array_equal(exponents, np.round(exponents))):
        raise ExportError(f"cannot export {policy_path}: int8_grid.input_multiplier must be "
                          f"{n_inputs} positive powers of two, got shape {mult.shape}")
    return mult.astype(np.float32)


def _as_observations(obs, dim: int, what: str) -> tuple[np.ndarray, str]:
    label = "provided"
    if isinstance(obs, tuple):
        obs, label = obs
    obs = np.asarray(obs, dtype=np.float32)
    if obs.ndim != 2 or obs.shape[1] != dim:
        raise ExportError(f"{what} observations must have shape (N, {dim}) to match the "
                          f"policy's input, got {obs.shape}")
    if len(obs) < 1 or not np.isfinite(obs).all():
        raise ExportError(f"{what} observations must be non-empty and finite")
    return obs, str(label)


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        manifest = out_dir / "manifest.json"
        try:
            ok = json.loads(manifest.read_text()).get("format") == EXPORT_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise ExportError(f"{out_dir} is a non-empty directory that is not a nanofly export; "
                              f"refusing to replace it (choose an empty or new --out)")


# ---------------------------------------------------------------------------------------------
# file contents

def _c_array_files(stem: str, tag: str, blob: bytes, widths: list[int]) -> tuple[str, str]:
    up = tag.upper()
    guard = f"NANOFLY_POLICY_{up}_H"
    crc = zlib.crc32(blob[:-4])
    header = f"""/* Generated by `nanofly export`: the {tag} model blob (docs/model-format.md). */
#ifndef {guard}
#define {guard}

#include <stdint.h>

#define NANOFLY_POLICY_{up}_SIZE {len(blob)}u
#define NANOFLY_POLICY_{up}_CRC32 0x{crc:08x}u
#define NANOFLY_POLICY_{up}_INPUT_DIM {widths[0]}u
#define NANOFLY_POLICY_{up}_OUTPUT_DIM {widths[-1]}u

/* The union makes the bytes 4-byte aligned in plain C99. */
typedef union {{
    uint32_t align;
    uint8_t bytes[NANOFLY_POLICY_{up}_SIZE];
}} nanofly_policy_{tag}_blob_t;

extern const nanofly_policy_{tag}_blob_t nanofly_policy_{tag}_blob;
#define NANOFLY_POLICY_{up}_DATA (nanofly_policy_{tag}_blob.bytes)

#endif
"""
    rows = []
    for i in range(0, len(blob), 16):
        rows.append("    " + ", ".join(f"0x{b:02x}" for b in blob[i:i + 16]) + ",")
    source = (f'/* Generated by `nanofly export`: {len(blob)} bytes, CRC-32 0x{crc:08x}. */\n'
              f'#include "{stem}.h"\n\n'
              f"const nanofly_policy_{tag}_blob_t nanofly_policy_{tag}_blob = {{.bytes = {{\n"
              + "\n".join(rows) + "\n}};\n")
    return header, source


def _error_stats(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "p99_abs": float(np.quantile(d, 0.99)),
            "max_abs_per_output": [float(v) for v in d.max(axis=0)]}


def _input_gain(actor, obs: np.ndarray) -> dict[str, float]:
    """How strongly the policy reacts to its inputs: the L1 norm over observation values of
    d action_k / d obs (max over k), quantiles over ``obs``. An input-referred error e moves the
    action by up to about gain * e; it puts the int8 error in context."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(obs)).requires_grad_(True)
    out = actor(x)
    grads = []
    for k in range(out.shape[1]):
        g, = torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)
        grads.append(g.abs().sum(dim=1))
    gain = torch.stack(grads, 1).max(dim=1).values.detach().numpy()
    return {"median": float(np.median(gain)), "p99": float(np.quantile(gain, 0.99)),
            "max": float(gain.max())}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------

def export_policy(policy_path, out_dir, *, calibration_obs=None, seed: int = 0,
                  eval_obs=None, num_calibration: int = DEFAULT_CALIBRATION,
                  num_eval: int = DEFAULT_EVALUATION, rounding: str = "gptq") -> dict[str, Any]:
    """Export ``policy_path`` (a policy.pt) into ``out_dir``; returns the manifest dict.

    ``calibration_obs`` / ``eval_obs``: (N, obs_dim) arrays, or ``(array, label)`` tuples, to
    use instead of simulator observations (tests pass synthetic ones labelled "synthetic").
    By default both come from ``nanofly.sim.VecEnv`` rollouts of the policy, with seeds
    ``seed`` and ``seed + 1``. Raises ``ExportError`` with a clear message on bad input.
    """
    import torch

    from nanofly.policy.actor import PolicyFileError

    from .onnx_export import OnnxRunner, build_onnx
    from .quantize import quantize_mlp, saturated_rows

    policy_path = Path(policy_path)
    out_dir = Path(out_dir)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ExportError(f"the calibration seed must be a whole number >= 0, got {seed!r} (--seed)")
    for what, n in (("calibration", num_calibration), ("evaluation", num_eval)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ExportError(f"the number of {what} observations must be a whole number >= 1, "
                              f"got {n!r} (--calibration / --eval; defaults "
                              f"{DEFAULT_CALIBRATION} / {DEFAULT_EVALUATION})")
    actor, payload, weights, biases = load_actor(policy_path)
    sizes = list(actor.layer_sizes)
    _check_target(out_dir)

    # observations: calibration (seed) and evaluation (seed + 1)
    def from_sim(n: int, s: int, what: str) -> tuple[np.ndarray, str]:
        try:
            return collect_calibration_observations(actor, n, s, payload=payload), "simulator"
        except CalibrationUnavailable as exc:
            raise ExportError(f"no {what} observations: {exc}. Pass observations explicitly "
                              f"(export_policy(..., calibration_obs=...)).") from exc
        except PolicyFileError as exc:  # the stored vehicle: never calibrate on another one
            raise ExportError(f"cannot export {policy_path}: {exc}") from exc

    if calibration_obs is None:
        cal, cal_label = from_sim(num_calibration, seed, "calibration")
    else:
        cal, cal_label = _as_observations(calibration_obs, sizes[0], "calibration")
    if eval_obs is not None:
        evo, ev_label = _as_observations(eval_obs, sizes[0], "evaluation")
    elif calibration_obs is None:
        evo, ev_label = from_sim(num_eval, seed + 1, "evaluation")
    else:
        try:
            evo = collect_calibration_observations(actor, num_eval, seed + 1, payload=payload)
            ev_label = "simulator"
        except CalibrationUnavailable:
            evo, ev_label = cal, f"{cal_label} (the calibration set itself)"
        except PolicyFileError as exc:
            raise ExportError(f"cannot export {policy_path}: {exc}") from exc

    # the three forms of the actor
    meta = {"nanofly.layer_sizes": json.dumps(sizes), "nanofly.activation": "tanh",
            "nanofly.policy_sha256": _sha256(policy_path.read_bytes())}
    onnx_bytes = build_onnx(weights, biases, metadata=meta).SerializeToString()
    blob_f32 = blobfmt.pack_f32(weights, biases)
    qm = quantize_mlp(weights, biases, cal, rounding=rounding,
                      input_multiplier=recorded_input_multiplier(payload, sizes[0], policy_path))
    blob_int8 = blobfmt.pack_int8(qm.input_multiplier, qm.q_weights, qm.scales, qm.biases)

    # measured errors against the float actor (torch, float32)
    with torch.no_grad():
        ref = actor(torch.from_numpy(evo)).numpy()
    try:
        out_f32 = CModel(blob_f32)(evo)
        out_int8 = CModel(blob_int8)(evo)
    except RuntimeBuildError as exc:
        raise ExportError(f"cannot measure the C runtime on this host: {exc}") from exc
    out_onnx = OnnxRunner(onnx_bytes)(evo)
    errors = {
        "reference": "torch float32 actor",
        "observations": {"count": int(len(evo)), "source": ev_label,
                         "seed": seed + 1 if ev_label == "simulator" else None},
        "onnx": _error_stats(out_onnx, ref),
        "c_f32": dict(_error_stats(out_f32, ref), bound=BOUND_F32),
        "c_int8": dict(_error_stats(out_int8, ref), bound=BOUND_INT8),
    }
    errors["policy_input_gain_l1"] = _input_gain(actor, evo[:2000])
    errors["c_f32"]["within_bound"] = errors["c_f32"]["max_abs"] <= BOUND_F32
    errors["c_int8"]["within_bound"] = errors["c_int8"]["max_abs"] <= BOUND_INT8
    # Observations beyond the int8 input range (set from the calibration peaks) are saturated
    # by the runtime, which is a different error from the rounding of weights: count them
    # and give the error without them, so a warning can say which of the two it is.
    saturated = saturated_rows(evo, qm.input_multiplier)
    errors["c_int8"]["saturated_observations"] = int(saturated.sum())
    errors["c_int8"]["max_abs_unsaturated"] = (
        float(np.abs(out_int8[~saturated] - ref[~saturated]).max()) if (~saturated).any() else None)

    # file contents
    files: dict[str, bytes] = {"policy.onnx": onnx_bytes, "policy_f32.bin": blob_f32,
                               "policy_int8.bin": blob_int8}
    for tag, data in (("f32", blob_f32), ("int8", blob_int8)):
        h, c = _c_array_files(f"policy_{tag}", tag, data, sizes)
        files[f"policy_{tag}.h"], files[f"policy_{tag}.c"] = h.encode(), c.encode()
    for name in RUNTIME_FILES:
        files[name] = (C_DIR / name).read_bytes()

    def blob_entry(name: str, data: bytes, fmt: str) -> dict[str, Any]:
        return {"file": name, "c_files": [name.replace(".bin", ".h"), name.replace(".bin", ".c")],
                "format": fmt, "bytes": len(data), "sha256": _sha256(data),
                "crc32": f"0x{zlib.crc32(data[:-4]):08x}"}

    from nanofly import __version__
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "nanofly_version": __version__,
        "policy": {"file": str(policy_path), "sha256": meta["nanofly.policy_sha256"],
                   "git_commit": payload.get("git_commit"),
                   "vehicle": (payload.get("vehicle") or {}).get("preset")},
        "input_dim": sizes[0],
        "output_dim": sizes[-1],
        "layer_sizes": sizes,
        "layers": [{"in": n, "out": m, "weight_shape": [m, n], "activation": "tanh"}
                   for n, m in zip(sizes[:-1], sizes[1:])],
        "activation": "tanh",
        "output_activation": "tanh",
        "observation": payload.get("observation"),
        "action": payload.get("action"),
        # the vehicle and MDP the policy was trained on: what a deployment needs besides the
        # weights (rotor speed range, thrust curve, control period, action history reset)
        "vehicle": payload.get("vehicle"),
        "mdp": payload.get("mdp"),
        "onnx": {"file": "policy.onnx", "input": "observation", "output": "action",
                 "sha256": _sha256(onnx_bytes)},
        "blobs": {"f32": blob_entry("policy_f32.bin", blob_f32, "float32"),
                  "int8": blob_entry("policy_int8.bin", blob_int8, "int8")},
        "quantization": dict(qm.info, calibration={
            "source": cal_label, "count": int(len(cal)),
            "seed": seed if cal_label == "simulator" else None},
            input_multiplier=[float(v) for v in qm.input_multiplier],
            weight_scales=[[float(v) for v in s] for s in qm.scales],
            hidden_activation_scale=1.0 / 32767.0),
        "errors": errors,
        # sha256 over the runtime's files in this order (each file's own is under "files")
        "runtime": {"files": list(RUNTIME_FILES),
                    "sha256": _sha256(b"".join(files[name] for name in RUNTIME_FILES)),
                    "limits": {"max_layers": blobfmt.MAX_LAYERS, "max_input": blobfmt.MAX_INPUT,
                               "max_width": blobfmt.MAX_WIDTH}},
        "files": {name: {"bytes": len(data), "sha256": _sha256(data)}
                  for name, data in sorted(files.items())},
    }
    files["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    write_atomically(out_dir, files)
    return manifest


def write_atomically(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a new directory next to ``out_dir`` and put it in place whole.

    Each file and the directory are synced before the swap, the parent directory after it.
    An existing ``out_dir`` is exchanged with the new one in one step (Linux
    ``renameat2(RENAME_EXCHANGE)``), so a reader always finds either the old export or the new
    one, never no directory; then the old one is removed. Where the system or file system
    cannot exchange, the old export is renamed aside and the new one renamed in (a moment
    without ``out_dir``; the old export is put back if the second rename fails). The directory
    and files get the permissions the umask gives, as ``mkdir`` and ``open`` would."""
    from nanofly.policy.file import fsync_directory

    out_dir = Path(out_dir)
    _check_target(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_directory_beside(out_dir, "tmp")
    except OSError as exc:
        raise ExportError(f"cannot write the export directory {out_dir}: {exc.strerror or exc}; "
                          f"choose a writable --out") from exc
    old = None
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(exist_ok=True)  # the runtime's kernels/ folder
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for folder in sorted({(tmp / name).parent for name in files}, reverse=True):
            fsync_directory(folder)
        if out_dir.exists() or out_dir.is_symlink():
            if _exchange(tmp, out_dir):
                old = tmp  # tmp now holds the previous export
            else:
                old = _new_directory_beside(out_dir, "old")
                os.replace(out_dir, old / "export")
                os.replace(tmp, out_dir)
        else:
            os.replace(tmp, out_dir)
        fsync_directory(parent)
    except OSError as exc:
        if old is not None and old != tmp and not out_dir.exists():
            os.replace(old / "export", out_dir)  # put the previous export back
        raise ExportError(f"cannot write the export directory {out_dir}: {exc}") from exc
    finally:
        for leftover in (tmp, old):
            if leftover is None or not os.path.lexists(leftover):
                continue
            if leftover.is_symlink():  # an --out that was a symlink, exchanged into tmp
                leftover.unlink()
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def _new_directory_beside(out_dir: Path, tag: str) -> Path:
    """A new, uniquely named hidden directory next to ``out_dir`` (mode 0777 less the umask)."""
    for _ in range(100):
        path = out_dir.with_name(f".{out_dir.name}.{tag}-{secrets.token_hex(6)}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{out_dir.parent}: no free temporary name next to {out_dir.name}")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (Linux 3.15+ ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system, the C library or the file system cannot,
    OSError on a real failure."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))

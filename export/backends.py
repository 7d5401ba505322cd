"""Evaluation backends: run one exported form of a policy on batches of observations.

    backend = make_backend("c-int8", "runs/policy.pt")   # or an export directory
    actions = backend(obs)                                # (N, obs_dim) -> (N, act_dim) float32
    backend.info(); backend.close()

Specs: ``onnx`` (onnxruntime, 1 thread), ``c-f32`` and ``c-int8`` (the C runtime compiled for
this host, the same source and bit-identical arithmetic as on the MCU). A policy.pt is exported
on the fly into a temporary directory (simulator calibration, ``seed``); one export per policy
file and process is shared by all its backends. With ``export_dir`` the export goes there
instead and is reused by later runs while it still matches the policy file and options.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SPECS = ("onnx", "c-f32", "c-int8")

_exports: dict[tuple, tuple[tempfile.TemporaryDirectory, Path]] = {}


class BackendError(ValueError):
    """Unknown backend spec or an unusable policy / export directory."""


def reusable_export(export_dir: Path, policy: Path, seed: int | None = None,
                    export_options: dict | None = None) -> bool:
    """Whether ``export_dir`` holds an export of this very policy file (SHA-256) and, unless
    ``seed`` and ``export_options`` are None, one made with this calibration seed and these
    options (counts, rounding): what ``export_policy`` would write again. With given
    observations (tests) it is never reused."""
    from .exporter import DEFAULT_CALIBRATION, DEFAULT_EVALUATION
    export_options = export_options or {}
    if "calibration_obs" in export_options or "eval_obs" in export_options:
        return False
    try:
        manifest = json.loads((Path(export_dir) / "manifest.json").read_text())
        have = (manifest["policy"]["sha256"], manifest["quantization"]["calibration"],
                manifest["errors"]["observations"]["count"],
                manifest["quantization"]["weight_rounding"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    sha256 = hashlib.sha256(Path(policy).read_bytes()).hexdigest()
    if seed is None:
        return have[0] == sha256
    want = (sha256,
            {"source": "simulator", "count": export_options.get("num_calibration",
                                                                 DEFAULT_CALIBRATION),
             "seed": seed},
            export_options.get("num_eval", DEFAULT_EVALUATION),
            export_options.get("rounding", "gptq"))
    return have == want


def _export_dir_for(policy: Path, seed: int, export_options: dict,
                    export_dir: Path | None = None) -> Path:
    """An export directory for ``policy`` (a policy.pt or an export directory); a policy.pt
    with ``export_dir``: that directory, exported into unless it holds a reusable export."""
    if policy.is_dir():
        if not (policy / "manifest.json").is_file():
            raise BackendError(f"{policy} is a directory without manifest.json: not a nanofly "
                               f"export directory (run `nanofly export POLICY --out DIR`)")
        return policy
    if not policy.is_file():
        raise BackendError(f"{policy}: no such policy file or export directory")
    if export_dir is not None:
        export_dir = Path(export_dir)
        if not reusable_export(export_dir, policy, seed, export_options):
            from .exporter import export_policy
            export_policy(policy, export_dir, seed=seed, **export_options)
        return export_dir
    st = policy.stat()
    key = (str(policy.resolve()), st.st_mtime_ns, st.st_size, seed,
           tuple(sorted(export_options.items())))
    if key not in _exports:
        from .exporter import export_policy
        tmp = tempfile.TemporaryDirectory(prefix="nanofly-export-")
        out = Path(tmp.name) / "export"
        export_policy(policy, out, seed=seed, **export_options)
        _exports[key] = (tmp, out)
    return _exports[key][1]


class _Backend:
    spec = ""

    def __init__(self, export_dir: Path, source: Path):
        self.export_dir = export_dir
        self.source = source
        self.manifest = json.loads((export_dir / "manifest.json").read_text())
        self.input_dim = int(self.manifest["input_dim"])
        self.output_dim = int(self.manifest["output_dim"])
        self._closed = False

    def _check(self, obs: np.ndarray) -> np.ndarray:
        if self._closed:
            raise BackendError(f"{self.spec} backend is closed")
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.input_dim:
            raise BackendError(f"observations must have shape (N, {self.input_dim}), "
                               f"got {obs.shape}")
        return obs

    def _verified(self, name: str, expected_sha256: str) -> bytes:
        data = (self.export_dir / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != expected_sha256:
            raise BackendError(f"{self.export_dir / name} does not match manifest.json (modified "
                               f"after export?); export again")
        return data

    def info(self) -> dict[str, Any]:
        return {"backend": self.spec, "source": str(self.source),
                "export_dir": str(self.export_dir), "input_dim": self.input_dim,
                "output_dim": self.output_dim}

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OnnxBackend(_Backend):
    spec = "onnx"

    def __init__(self, export_dir: Path, source: Path):
        super().__init__(export_dir, source)
        from .onnx_export import OnnxRunner
        data = self._verified("policy.onnx", self.manifest["onnx"]["sha256"])
        self._runner = OnnxRunner(data)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self._runner(self._check(obs)).astype(np.float32, copy=False)

    def info(self) -> dict[str, Any]:
        err = self.manifest["errors"]["onnx"]
        return dict(super().info(), runtime="onnxruntime (1 thread)",
                    max_abs_error_vs_torch=err["max_abs"])

    def close(self) -> None:
        self._runner = None
        super().close()


class CBackend(_Backend):
    def __init__(self, export_dir: Path, source: Path, fmt: str):
        super().__init__(export_dir, source)
        from .runtime import CModel, build_shared_library
        self.spec = f"c-{fmt}"
        self._fmt = fmt
        entry = self.manifest["blobs"][fmt]
        blob = self._verified(entry["file"], entry["sha256"])
        self._library = build_shared_library()
        self._model = CModel(blob, self._library)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self._model(self._check(obs))

    def info(self) -> dict[str, Any]:
        entry = self.manifest["blobs"][self._fmt]
        err = self.manifest["errors"][f"c_{self._fmt}"]
        return dict(super().info(), runtime="nanofly C runtime (host build, portable kernels)",
                    library=str(self._library), blob_bytes=entry["bytes"],
                    blob_sha256=entry["sha256"], blob_crc32=entry["crc32"],
                    max_abs_error_vs_torch=err["max_abs"],
                    error_observations=self.manifest["errors"]["observations"])

    def close(self) -> None:
        self._model = None
        super().close()


def export_dir_for(policy, *, seed: int = 0, export_dir=None, **export_options) -> Path:
    """The export directory for ``policy``: an export directory as is, or a policy.pt exported
    on the fly (once per policy file, seed and options in this process, shared with the
    backends made here), into ``export_dir`` when given (reused while it matches)."""
    return _export_dir_for(Path(policy), seed, export_options, export_dir)


def make_backend(spec: str, policy, *, seed: int = 0, export_dir=None,
                 **export_options) -> _Backend:
    """A backend ``spec`` ('onnx', 'c-f32', 'c-int8') for ``policy`` (a policy.pt, exported on
    the fly with calibration seed ``seed`` and ``export_options`` for ``export_policy``, e.g.
    ``num_calibration``, or an export directory). ``export_dir``: where a policy.pt's export
    goes, reused as it is when it already holds this policy's export with these options."""
    if spec not in SPECS:
        raise BackendError(f"unknown backend {spec!r}; choose one of {', '.join(SPECS)}")
    source = Path(policy)
    export_dir = _export_dir_for(source, seed, export_options, export_dir)
    if spec == "onnx":
        return OnnxBackend(export_dir, source)
    return CBackend(export_dir, source, spec[2:])

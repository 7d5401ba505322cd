"""nanofly.export: policy.pt -> ONNX, float32 and int8 C model blobs, the portable C runtime.

``export_policy(policy_path, out_dir, ...)`` writes an export directory (docs/model-format.md);
``backends.make_backend("onnx" | "c-f32" | "c-int8", policy_or_export_dir)`` runs one form of a
policy on batches of observations. Heavy modules (torch, onnx) load on first use.
"""
from __future__ import annotations

__all__ = ["export_policy", "ExportError", "make_backend", "collect_calibration_observations"]


def __getattr__(name):
    if name in ("export_policy", "ExportError"):
        from . import exporter
        return getattr(exporter, name)
    if name == "make_backend":
        from .backends import make_backend
        return make_backend
    if name == "collect_calibration_observations":
        from .calibration import collect_calibration_observations
        return collect_calibration_observations
    raise AttributeError(f"module 'nanofly.export' has no attribute {name!r}")

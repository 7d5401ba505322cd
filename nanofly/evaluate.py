"""Evaluation across backends: ``nanofly eval`` and the choice of how a policy is run.

This module sits above every stage: it may import all of them. A policy is run as
``torch`` (the policy file's actor, ``nanofly.train.evaluate.TorchPolicy``), ``onnx``,
``c-f32`` or ``c-int8`` (the exported models, ``nanofly.export.backends``), ``pil:URL`` (the C
runtime on the board or in QEMU, ``nanofly.firmware_bridge.pil``) or ``cf-sitl`` (the Crazyflie
app's controller compiled for the host, ``nanofly.firmware_bridge.crazyflie_sitl``); each flies
the simulator's evaluation suites (``nanofly.train.evaluate``: hover, figure8).

Only the standard library is imported at module level (``nanofly --help`` registers ``eval``
from here); the stages load inside the functions.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def register(sub) -> None:
    e = sub.add_parser(
        "eval", help="evaluate a policy in simulation (exit 1 when it misses the thresholds)",
        description="Run evaluation suites with the paper's observation noise and disturbances. "
                    "Exit status 1 when a suite misses its thresholds (CI gate), 2 on bad input.")
    e.add_argument("policy", help="policy.pt, a run directory (its policy.pt), or an export "
                                  "directory (the onnx, c-f32, c-int8 and pil backends)")
    e.add_argument("--suite", action="append", choices=("hover", "figure8"),
                   help="suite to run (repeatable; default: hover)")
    e.add_argument("--backend", default="torch",
                   help="torch | onnx | c-f32 | c-int8 | pil:URL (pil:emulate starts QEMU) | "
                        "cf-sitl (the Crazyflie app's controller and the firmware's power "
                        "distribution built for this host against $CRAZYFLIE_BASE)")
    e.add_argument("--episodes", type=int, default=None,
                   help="episodes per suite (default: hover 1000, figure8 16)")
    e.add_argument("--seed", type=int, default=None, help="evaluation seed")
    e.add_argument("--min-success", type=float, default=None,
                   help="hover threshold: minimum success rate (default 0.95)")
    e.add_argument("--max-rmse", type=float, default=None,
                   help="figure8 threshold: maximum position RMSE in m (default 0.10)")
    e.add_argument("--export-dir", default=None, metavar="DIR",
                   help="onnx, c-f32, c-int8 and pil backends with a policy.pt: run the export "
                        "in DIR when it is of this very policy file (`nanofly export POLICY "
                        "--out DIR`), else export into DIR for later runs (default: a "
                        "temporary export per run)")
    e.add_argument("--plots", default=None, metavar="DIR",
                   help="write rollout plots of each suite run into DIR: hover (x-y, position "
                        "vs time), figure8 (x-y against the reference, position vs time, "
                        "tracking error); terminated episodes end in an x")
    e.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    e.set_defaults(handler=_eval)


RECORDED_EPISODES = {"hover": 8, "figure8": 4}  # episodes drawn by --plots


def _eval(args) -> int:
    """``nanofly eval``: the options checked, then ``run_eval``."""
    problem = None
    if args.episodes is not None and args.episodes < 1:
        problem = f"--episodes must be >= 1, got {args.episodes} (leave it out for the default)"
    elif args.min_success is not None and not 0.0 <= args.min_success <= 1.0:
        problem = f"--min-success is a fraction from 0 to 1, got {args.min_success} (0.95: 95 %)"
    elif args.max_rmse is not None and not (math.isfinite(args.max_rmse) and args.max_rmse > 0):
        problem = f"--max-rmse must be a positive number of metres, got {args.max_rmse}"
    elif args.export_dir is not None and not (args.backend in ("onnx", "c-f32", "c-int8")
                                              or args.backend.startswith("pil:")):
        problem = (f"--export-dir applies to the onnx, c-f32, c-int8 and pil backends, not "
                   f"--backend {args.backend}")
    elif args.export_dir is not None and (Path(args.policy) / "manifest.json").is_file():
        problem = (f"--export-dir: {args.policy} is an export directory already; pass it "
                   f"alone, or a policy.pt to export into --export-dir")
    elif args.plots is not None and Path(args.plots).exists() and not Path(args.plots).is_dir():
        problem = f"--plots {args.plots} is a file; give a directory (it is created if missing)"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return run_eval(args)


def run_eval(args) -> int:
    """Run the chosen suites on the chosen backend; exit status 0 passed, 1 missed a
    threshold, 2 bad input."""
    from nanofly.policy.file import PolicyFileError
    from nanofly.train.commands import ProgressBar
    from nanofly.train.evaluate import Figure8Thresholds, HoverThresholds, public, run_suite

    policy_path = Path(args.policy)
    suites = args.suite or ["hover"]
    try:
        run_path = policy_path
        if args.export_dir is not None:
            run_path = _export_into(policy_path, Path(args.export_dir))
        policy, preset, mdp = open_for_eval(run_path, args.backend)
    except (PolicyFileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"policy": str(policy_path), "backend": args.backend, "suites": {}}
    passed = True
    try:
        for suite in suites:
            kwargs: dict[str, Any] = {"preset": preset, "mdp": mdp}
            if args.episodes:
                kwargs["episodes"] = args.episodes
            if args.seed is not None:
                kwargs["seed"] = args.seed
            if suite == "hover" and args.min_success is not None:
                kwargs["thresholds"] = HoverThresholds(min_success_rate=args.min_success)
            if suite == "figure8" and args.max_rmse is not None:
                kwargs["thresholds"] = Figure8Thresholds(max_position_rmse_m=args.max_rmse)
            if args.plots is not None:
                kwargs["record"] = RECORDED_EPISODES[suite]
            t0 = time.perf_counter()
            bar = ProgressBar(1, label=f"{suite} suite ({args.backend})", line_every_s=10.0)

            def progress(done: int, steps: int) -> None:
                bar.set_total(steps)
                bar.update(done, time.perf_counter() - t0)

            full = run_suite(suite, policy, progress=progress, **kwargs)
            bar.close()
            result = public(full)
            result["wall_time_s"] = round(time.perf_counter() - t0, 3)
            if args.plots is not None:
                result["plots"] = [str(p) for p in _plot(suite, full, Path(args.plots))]
            out["suites"][suite] = result
            passed &= result["passed"]
    finally:
        info = policy.info() if hasattr(policy, "info") else {}
        if hasattr(policy, "close"):
            policy.close()
    if info:
        out["backend_info"] = info
    out["passed"] = passed
    if args.json:
        print(json.dumps(out))
    else:
        for suite, r in out["suites"].items():
            status = "PASS" if r["passed"] else "FAIL"
            if suite == "hover":
                print(f"hover   [{status}] success {100 * r['success_rate']:.1f}% "
                      f"(threshold {100 * r['thresholds']['min_success_rate']:.0f}%), "
                      f"{r['episodes']} episodes, final position RMSE {_metres(r['final_position_rmse_m'])}, "
                      f"settled within 200 mm {100 * r['settling_fraction_200mm']:.1f}%")
            else:
                print(f"figure8 [{status}] position RMSE {_metres(r['position_rmse_m'])} "
                      f"(threshold {r['thresholds']['max_position_rmse_m']:g} m), max error "
                      f"{_metres(r['max_position_error_m'])}, completion "
                      f"{100 * r['completion_rate']:.0f}%")
            if r.get("plots"):
                print(f"        plots: {', '.join(r['plots'])}")
    return 0 if passed else 1


def _metres(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} m"


def _export_into(policy_path: Path, export_dir: Path) -> Path:
    """``--export-dir``: the export directory of ``policy_path`` in ``export_dir``, made there
    (default options) unless it already holds an export of this very policy file, which is
    then run as it is, whatever options made it."""
    from nanofly.export.backends import export_dir_for, reusable_export
    from nanofly.export.exporter import ExportError

    if policy_path.is_dir():  # a run directory
        policy_path = policy_path / "policy.pt"
    if policy_path.is_file() and reusable_export(export_dir, policy_path):
        print(f"reusing the export of {policy_path} in {export_dir}", file=sys.stderr)
        return export_dir
    print(f"exporting {policy_path} to {export_dir} (reused by later runs)...", file=sys.stderr)
    try:
        return export_dir_for(policy_path, export_dir=export_dir)
    except ExportError as exc:
        raise ValueError(f"--export-dir {export_dir}: {exc}") from None


def _plot(suite: str, result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The rollout plots of one suite's recorded episodes into ``out_dir``."""
    from nanofly.train.plots import plot_figure8_rollouts, plot_hover_rollouts

    out_dir.mkdir(parents=True, exist_ok=True)
    if suite == "hover":
        return plot_hover_rollouts(result["_trajectories"], out_dir, prefix="hover_")
    return plot_figure8_rollouts(result["_trajectories"], out_dir, prefix="figure8_")


def make_policy(backend: str, policy_path) -> Any:
    """A policy callable for ``backend`` in torch | onnx | c-f32 | c-int8 | pil:URL | cf-sitl."""
    if backend == "torch":
        from nanofly.train.evaluate import TorchPolicy

        return TorchPolicy(policy_path)
    if backend in ("onnx", "c-f32", "c-int8"):
        from nanofly.export.backends import make_backend

        return make_backend(backend, policy_path)
    if backend.startswith("pil:"):
        from nanofly.firmware_bridge.pil import make_backend as make_pil

        return make_pil(backend[4:], policy_path)
    if backend == "cf-sitl":
        from nanofly.firmware_bridge.crazyflie_sitl import make_backend as make_sitl

        return make_sitl(policy_path)
    raise ValueError(f"unknown backend {backend!r}; choose torch, onnx, c-f32, c-int8, pil:URL "
                     f"or cf-sitl")


def open_for_eval(path, backend: str):
    """``(policy callable, vehicle, evaluation MDP)`` for ``nanofly eval PATH --backend B``.

    ``path``: a policy file, a run directory (its ``policy.pt``), or an export directory
    (``manifest.json``, which records the vehicle and MDP; the C, ONNX and PIL backends run
    its blobs, the torch backend needs the policy file). Raises ``PolicyFileError`` (a
    ``ValueError``) naming what is wrong and what to pass instead."""
    from nanofly.policy.file import PolicyFileError
    from nanofly.train.evaluate import policy_mdp

    path = Path(path)
    if path.is_dir():
        manifest_path, run_policy = path / "manifest.json", path / "policy.pt"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise PolicyFileError(f"{manifest_path}: not readable JSON ({exc}); export "
                                      f"again with nanofly export") from None
            if not isinstance(manifest, dict) or manifest.get("format") != "nanofly-export":
                raise PolicyFileError(f"{manifest_path}: not a nanofly export manifest; export "
                                      f"again with nanofly export")
            if "vehicle" not in manifest:
                raise PolicyFileError(f"{manifest_path} records no vehicle (an export by an "
                                      f"earlier nanofly); export the policy again")
            if backend == "torch":
                raise PolicyFileError(f"{path} is an export directory, which has no torch policy; "
                                      f"use --backend c-int8, c-f32, onnx or pil:URL, or pass the "
                                      f"policy.pt")
            described = {key: manifest.get(key) for key in ("vehicle", "mdp", "observation")}
            described["actor"] = {"layer_sizes": manifest.get("layer_sizes")}
            try:
                vehicle, mdp = policy_mdp(described)
            except PolicyFileError as exc:
                raise PolicyFileError(f"{manifest_path}: {exc}") from None
            return _make_policy_for_eval(backend, path), vehicle, mdp
        if not run_policy.is_file():
            raise PolicyFileError(f"{path}: neither a run directory (policy.pt) nor an export "
                                  f"directory (manifest.json); pass a policy file or one of those")
        path = run_policy
    from nanofly.policy.actor import load_policy  # torch: only for a policy file

    try:
        _, payload = load_policy(path)
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
        raise PolicyFileError(f"{path}: malformed actor description ({type(exc).__name__}: "
                              f"{exc}); train or save the policy again") from None
    try:
        vehicle, mdp = policy_mdp(payload)
    except PolicyFileError as exc:
        raise PolicyFileError(f"{path}: {exc}") from None
    return _make_policy_for_eval(backend, path), vehicle, mdp


def _make_policy_for_eval(backend: str, path):
    """``make_policy``, with a PIL board that cannot be reached or started as a ``ValueError``
    (a one-line error of ``nanofly eval``) instead of the bridge's own exceptions."""
    if not backend.startswith("pil:"):
        return make_policy(backend, path)
    from nanofly.firmware_bridge.emulator import EmulatorError
    from nanofly.firmware_bridge.firmware import FirmwareBuildError
    from nanofly.firmware_bridge.protocol import ProtocolError

    try:
        return make_policy(backend, path)
    except ProtocolError as exc:
        raise ValueError(f"--backend {backend}: {exc} (check the URL, and that the board runs the "
                         f"bridge firmware: nanofly firmware status --port URL)") from None
    except (EmulatorError, FirmwareBuildError) as exc:
        raise ValueError(f"--backend {backend}: {exc}") from None

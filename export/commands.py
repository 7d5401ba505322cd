"""CLI: ``nanofly export POLICY --out DIR [--json] [--mcu]`` (the export benchmark is
bench/bench_export.py).

Light on purpose: torch, onnx and numpy load inside the handlers.
"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a policy to ONNX, float32/int8 C model blobs and the C runtime",
        description="Write an export directory: policy.onnx, policy_f32/int8 .bin/.h/.c, the C "
                    "runtime (nanofly_policy.h, its sources and kernels/) and manifest.json "
                    "(docs/model-format.md). "
                    "int8 calibration and the measured errors use simulator observations.")
    p.add_argument("policy", metavar="POLICY", help="policy file (policy.pt)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="export directory (written atomically; an existing export is replaced)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration rollouts (evaluation uses seed + 1)")
    p.add_argument("--calibration", type=int, default=8192, metavar="N",
                   help="simulator observations for int8 calibration (default 8192)")
    p.add_argument("--eval", type=int, default=10_000, metavar="N", dest="num_eval",
                   help="simulator observations for the measured errors (default 10000)")
    p.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="int8 weight rounding (default gptq: error feedback on calibration data)")
    p.add_argument("--mcu", action="store_true",
                   help="also cross-compile for the Cortex-M4 and report flash, stack and "
                        "instructions per inference on QEMU (needs arm-none-eabi-gcc, QEMU)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_export)



def _summary(manifest: dict) -> dict:
    q = {k: v for k, v in manifest["quantization"].items()
         if k not in ("input_multiplier", "weight_scales")}
    return {"layer_sizes": manifest["layer_sizes"], "blobs": manifest["blobs"],
            "quantization": q, "errors": manifest["errors"]}


def _export(args) -> int:
    from .exporter import ExportError, export_policy
    try:
        manifest = export_policy(args.policy, args.out, seed=args.seed,
                                 num_calibration=args.calibration, num_eval=args.num_eval,
                                 rounding=args.rounding)
    except ExportError as exc:
        print(f"nanofly export: {exc}", file=sys.stderr)
        return 2
    result = {"out": str(args.out), **_summary(manifest)}
    if args.mcu:
        from .mcu import mcu_figures
        result["mcu"] = mcu_figures(args.out)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    err = manifest["errors"]
    print(f"exported {args.policy} -> {args.out}")
    print(f"  actor {'-'.join(map(str, manifest['layer_sizes']))} tanh; "
          f"f32 blob {manifest['blobs']['f32']['bytes']} B, "
          f"int8 blob {manifest['blobs']['int8']['bytes']} B")
    print(f"  max |action - torch| over {err['observations']['count']} "
          f"{err['observations']['source']} observations: onnx {err['onnx']['max_abs']:.2e}, "
          f"c-f32 {err['c_f32']['max_abs']:.2e} (bound {err['c_f32']['bound']:g}), "
          f"c-int8 {err['c_int8']['max_abs']:.2e} (bound {err['c_int8']['bound']:g})")
    for name in ("c_f32", "c_int8"):
        if not err[name]["within_bound"]:
            advice = ("; fine-tune the policy for int8 (nanofly train --int8-aware-steps "
                      "60000), or upload float32 (nanofly flash DIR --format f32)"
                      if name == "c_int8" else "")
            print(f"  WARNING: {name} error exceeds its bound{advice}", file=sys.stderr)
    int8 = err["c_int8"]
    if not int8["within_bound"] and int8.get("saturated_observations"):
        rest = int8.get("max_abs_unsaturated")
        print(f"  {int8['saturated_observations']} of {err['observations']['count']} observations "
              f"exceed the int8 input range set from the calibration observations (the runtime "
              f"saturates them); on the others the int8 error is "
              f"{'n/a' if rest is None else f'{rest:.2e}'}. Calibrate on observations that "
              f"cover the range the vehicle meets, or check closed loop: "
              f"nanofly eval POLICY --backend c-int8", file=sys.stderr)
    if args.mcu:
        print(json.dumps(result["mcu"], indent=2))
    return 0

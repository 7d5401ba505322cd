"""What the int8 accuracy bound would cost: ``python bench/bench_int8_precision_budget.py
[--policy models/crazyflie_hover/policy.pt]``.

A what-if study, not the exporter: the policy is quantized the exporter's way (int16
activations, GPTQ rounding with bias correction, calibration seed 0 / evaluation seed 1 as in
``nanofly export``) except that chosen parts get finer weight grids, and the maximum action
error against the float policy over the 10 000 evaluation observations is printed with the
flash the weights would then need. Plans:

- ``int8`` (what ships; the exporter's own quantize_mlp and its input multipliers);
- ``layer2_16bit``: output layer at 16 bits;
- ``state_columns_16bit``: layer 0's 18 state columns at 16 bits with their own per-row scale,
  rounded last so that GPTQ pushes the int8 columns' errors into them, inputs 8x the
  calibration peak (no saturation); ``+layer2``, ``+layer1`` add those layers at 16 bits;
- ``float_weights``: weights exact, only the int16 activations quantized (the floor; state
  inputs with the 8x range).

``max_abs_error_unsaturated`` leaves out observations beyond the plan's int16 input range.

Prints one JSON object. Takes ~1 minute (simulator rollouts + GPTQ per plan).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

STATE_COLUMNS = 18


def _gptq(w: np.ndarray, x: np.ndarray, fine_columns: np.ndarray, fine_levels: int,
          coarse_levels: int = 127, damp: float = 0.01) -> np.ndarray:
    """Dequantized weights (in integer-input units): coarse columns on a per-row grid of
    ``coarse_levels``, then ``fine_columns`` on their own per-row grid of ``fine_levels``,
    rounded last with GPTQ error feedback (so they absorb the coarse columns' errors)."""
    from nanofly.export.quantize import gptq_factor

    n = w.shape[1]
    coarse = np.setdiff1d(np.arange(n), fine_columns)
    h = x.T @ x / len(x)
    energy = np.diag(h)
    order = np.concatenate([coarse[np.argsort(-energy[coarse], kind="stable")],
                            fine_columns[np.argsort(-energy[fine_columns], kind="stable")]])
    u = gptq_factor(h, order, damp)
    w = w[:, order].copy()
    out = np.zeros_like(w)
    step = np.abs(w[:, :len(coarse)]).max(axis=1) / coarse_levels if len(coarse) else None
    levels = coarse_levels
    for i in range(n):
        if i == len(coarse):  # the fine grid is set by what is left after the feedback
            step, levels = np.abs(w[:, i:]).max(axis=1) / fine_levels, fine_levels
        q = np.clip(np.rint(w[:, i] / step), -levels, levels) * step
        out[:, i] = q
        w[:, i + 1:] -= np.outer((w[:, i] - q) / u[i, i], u[i, i + 1:])
    result = np.empty_like(out)
    result[:, order] = out
    return result


def _plan_error(weights, biases, cal, ev, ref, levels, fine0, headroom_fine=8.0):
    """(max error, max error on the observations the int16 input does not saturate)."""
    from nanofly.export import quantize as Q

    n0 = weights[0].shape[1]
    fine0 = np.asarray(fine0, dtype=np.int64)
    coarse0 = np.setdiff1d(np.arange(n0), fine0)
    mult = np.ones(n0, np.float32)
    if len(coarse0):
        mult[coarse0] = Q.input_multipliers(weights[0][:, coarse0], cal[:, coarse0])
    if len(fine0):
        span = np.maximum(np.abs(cal[:, fine0]).max(axis=0) * headroom_fine, Q.INPUT_FLOOR)
        mult[fine0] = np.exp2(np.floor(np.log2(32767.0 / span)))
    x_q = Q.quantize_input(cal, mult).astype(np.float64)
    x_f = cal.astype(np.float64)
    step = 1.0 / mult.astype(np.float64)
    layers = []
    for li, (w, b) in enumerate(zip(weights, biases)):
        w_int = w * step[None, :]
        if levels[li] is None:
            wq = w_int
        elif li == 0:
            wq = _gptq(w_int, x_q, fine0, 32767)
        else:
            wq = _gptq(w_int, x_q, np.arange(w.shape[1]), levels[li])
        z_f = x_f @ w.T + b
        z_q = x_q @ wq.T
        bias = b + np.mean(z_f - (z_q + b), axis=0)
        layers.append((wq, bias))
        t, x_f = np.tanh(z_q + bias), np.tanh(z_f)
        if li + 1 < len(weights):
            x_q, step = np.rint(t * Q.Q15), np.full(w.shape[0], 1.0 / Q.Q15)
    x = Q.quantize_input(ev, mult).astype(np.float64)
    for li, (wq, bias) in enumerate(layers):
        t = np.tanh(x @ wq.T + bias)
        x = np.rint(t * Q.Q15) if li + 1 < len(layers) else t
    return _errors(x, ref, Q.saturated_rows(ev, mult))


def _errors(actions, ref, saturated):
    per_row = np.abs(actions - ref).max(axis=1)
    return float(per_row.max()), float(per_row[~saturated].max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="models/crazyflie_hover/policy.pt")
    args = parser.parse_args(argv)
    import torch

    from nanofly.export import exporter
    from nanofly.export import quantize as Q
    from nanofly.export.calibration import collect_calibration_observations
    from nanofly.policy.actor import load_policy

    actor, payload = load_policy(args.policy)
    cal = collect_calibration_observations(actor, exporter.DEFAULT_CALIBRATION, 0, payload=payload)
    ev = collect_calibration_observations(actor, exporter.DEFAULT_EVALUATION, 1, payload=payload)
    linear = actor.linear_layers()
    weights = [m.weight.detach().double().numpy() for m in linear]
    biases = [m.bias.detach().double().numpy() for m in linear]
    with torch.no_grad():
        ref = actor(torch.from_numpy(ev)).double().numpy()
    shipped_model = Q.quantize_mlp(weights, biases, cal)
    shipped = Q.simulate_int8(shipped_model, ev)
    counts = [w.size for w in weights]
    state = list(range(STATE_COLUMNS))
    fine16 = 32767
    plans = {
        "int8": (None, counts[0] + counts[1] + counts[2]),
        "layer2_16bit": (([127, 127, fine16], []), counts[0] + counts[1] + 2 * counts[2]),
        "state_columns_16bit": (([127, 127, 127], state),
                                sum(counts) + STATE_COLUMNS * weights[0].shape[0]),
        "state_columns_16bit+layer2": (([127, 127, fine16], state),
                                       sum(counts) + STATE_COLUMNS * weights[0].shape[0] + counts[2]),
        "state_columns_16bit+layer1+layer2": (([127, fine16, fine16], state),
                                              sum(counts) + STATE_COLUMNS * weights[0].shape[0]
                                              + counts[1] + counts[2]),
        "float_weights": (([None, None, None], state), 4 * sum(counts)),
    }
    result = {"policy": args.policy, "bound": 0.02, "evaluation_observations": len(ev),
              "flash_limit_bytes": 16384, "plans": {}}
    for name, (spec, weight_bytes) in plans.items():
        if spec is None:
            err, err_unsat = _errors(shipped, ref, Q.saturated_rows(ev, shipped_model.input_multiplier))
        else:
            levels, fine0 = spec
            err, err_unsat = _plan_error(weights, biases, cal, ev, ref, levels, fine0)
        result["plans"][name] = {"max_abs_error": round(err, 4),
                                 "max_abs_error_unsaturated": round(err_unsat, 4),
                                 "weight_bytes": int(weight_bytes)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

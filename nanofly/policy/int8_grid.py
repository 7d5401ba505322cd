"""The int8 weight grid of the exported C model: what a weight may be after int8 quantization.

The int8 format (``nanofly.export``) stores each layer as int8 weights with one float scale per
output row, acting on integer inputs: the observations times a power-of-two multiplier per
input channel (int16), the hidden activations as Q15 (round(32767 tanh)). So the float weights
it can represent exactly form a grid: per row, multiples of ``scale / step`` with
``scale = max|w| * step / 127``. ``input_multipliers`` chooses the multipliers, and
``snap_to_int8_grid`` projects float weights onto the grid.

Both the exporter (``nanofly.export.quantize``, which quantizes onto this grid) and
quantization-aware training (``TrainConfig.int8_aware_steps``, which trains on it) use this
one definition, so that weights trained on the grid come back unchanged from the exporter.
"""
from __future__ import annotations

import numpy as np

Q15 = 32767.0
INPUT_HEADROOM = 2.0     # calibrated |obs| max maps to at most half of the int16 range
INPUT_FLOOR = 1.0        # channels that barely move in calibration still accept +-0.5 or more
WEIGHT_QMAX = 127


def input_multipliers(first_layer_weights: np.ndarray, calibration_obs: np.ndarray,
                      *, search_octaves: int = 12, min_span: np.ndarray | float = 0.0) -> np.ndarray:
    """Power-of-two multiplier per input channel, chosen to minimize the first layer's expected
    pre-activation error on the calibration observations.

    The integer dot product needs one scale per row, so the multipliers are folded into the
    first layer's weights (W'[:, j] = W[:, j] / mult[j]) before int8 rounding. Taking each
    multiplier from its channel's range alone lets wide-range inputs or large-weight columns set
    every row's int8 step (the angular velocity at +-32 rad/s made all other weights 30x coarser;
    a trained policy's position weights made its history weights 30 % errors: max action error
    0.18). So each channel's exponent is searched (coordinate descent, at most
    ``search_octaves`` below the finest grid its range allows) to minimize
        sum_i [ (max_j |W'_ij| / 127)^2 sum_j mult_j^2 E[x_j^2] + sum_j W_ij^2 / mult_j^2 ] / 12,
    the weight-rounding plus input-rounding error variance. A coarser input grid costs little
    with 16-bit inputs; in exchange small weights get a finer int8 grid. Powers of two keep
    obs * mult exact in float32, and the range limit keeps saturation at INPUT_HEADROOM.
    ``min_span``: per channel, a range the grid must cover whatever the calibration peaks."""
    w = np.asarray(first_layer_weights, np.float64)
    x = np.asarray(calibration_obs, np.float64)
    peak = np.abs(x).max(axis=0)
    ex2 = np.mean(x * x, axis=0)
    span = np.maximum(np.maximum(peak * INPUT_HEADROOM, INPUT_FLOOR), min_span)
    hi = np.floor(np.log2(32767.0 / span)).astype(np.int64)
    exps = hi.copy()
    aw = np.abs(w)
    w2 = w * w

    def cost(e: np.ndarray) -> float:
        m = np.exp2(e.astype(np.float64))
        row_step = (aw / m).max(axis=1) / WEIGHT_QMAX
        return float((row_step ** 2).sum() * (m * m * ex2).sum() + (w2 / (m * m)).sum())

    best = cost(exps)
    for _sweep in range(8):
        changed = False
        for j in range(len(exps)):
            keep = exps[j]
            for cand in range(hi[j] - search_octaves, hi[j] + 1):
                if cand == keep:
                    continue
                exps[j] = cand
                c = cost(exps)
                if c < best * (1 - 1e-12):
                    best, keep, changed = c, cand, True
            exps[j] = keep
        if not changed:
            break
    return np.exp2(exps).astype(np.float32)


def choose_row_scales(w: np.ndarray) -> np.ndarray:
    """Per output row of ``w`` (out x in, in integer-input units), the int8 step:
    max|w_row| / 127 (1 for an all-zero row), rounded to float32 as the blob stores it."""
    peak = np.abs(w).max(axis=1)
    scale = np.where(peak > 0, peak / WEIGHT_QMAX, 1.0)
    return scale.astype(np.float32).astype(np.float64)


def round_to_row_grid(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``w`` rounded to the nearest multiple of its row's ``scale``, as int8 values (int32)."""
    return np.clip(np.rint(w / scale[:, None]), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int32)


def layer_input_steps(weights: list[np.ndarray], input_multiplier: np.ndarray) -> list[np.ndarray]:
    """Per layer, the real value of one unit of its integer inputs (1 / multiplier for the
    observations, 1 / 32767 for the Q15 hidden activations)."""
    first = 1.0 / np.asarray(input_multiplier, np.float64)
    return [first] + [np.full(np.shape(w)[1], 1.0 / Q15) for w in weights[1:]]


def snap_to_int8_grid(weights: list[np.ndarray], input_multiplier: np.ndarray) -> list[np.ndarray]:
    """The float32 weights that the int8 format represents exactly: each row rounded to its own
    grid (scale = max|w| / 127 in integer-input units, as ``quantize_mlp`` chooses it). The
    straight-through projection of quantization-aware training (``TrainConfig.int8_aware_steps``):
    weights snapped here come back unchanged, bit for bit in the integers, from ``quantize_mlp``
    with the same ``input_multiplier``."""
    out = []
    for w, step in zip(weights, layer_input_steps(weights, input_multiplier)):
        w_int = np.asarray(w, np.float64) * step[None, :]
        scale = choose_row_scales(w_int)
        q = round_to_row_grid(w_int, scale)
        out.append((q * scale[:, None] / step[None, :]).astype(np.float32))
    return out

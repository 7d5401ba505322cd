"""The torch actor network and the policy file reader (``load_policy``).

A policy file is what every later stage reads (evaluation, export, the firmware bridge): it
holds the actor weights plus everything needed to use them without the training code: the
observation layout, the action mapping, the vehicle, the MDP and training configuration, the git
commit and the evaluation metrics at save time. It is a dict of tensors and builtin types in
``torch.save``'s layout, so ``torch.load(weights_only=True)`` reads it safely; it is written by
``nanofly.policy.file`` without importing torch (re-exported here: ``save_policy``). This
module imports torch; ``nanofly.policy.file`` does not import this one.
"""
from __future__ import annotations

import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .file import (POLICY_FORMAT, POLICY_FORMAT_VERSION, SUPPORTED_ACTIVATIONS,
                          ActorWeights, PolicyFileError, check_layer_sizes, git_commit,
                          parameter_shapes, save_policy)

__all__ = ["POLICY_FORMAT", "POLICY_FORMAT_VERSION", "SUPPORTED_ACTIVATIONS", "Actor",
           "ActorWeights", "PolicyFileError", "git_commit", "init_actor", "load_policy",
           "policy_summary", "save_policy"]


class Actor(nn.Module):
    """MLP actor: observation -> normalized action in [-1, 1].

    ``layer_sizes`` = [input, hidden..., output], e.g. [146, 64, 64, 4]. Every layer is a
    ``Linear`` followed by ``tanh`` (the output too, which bounds actions to [-1, 1]). The
    layers live in one ``nn.Sequential`` (``self.net``) so ONNX export sees a plain graph.
    """

    def __init__(self, layer_sizes: list[int] | tuple[int, ...], activation: str = "tanh"):
        super().__init__()
        if activation not in SUPPORTED_ACTIVATIONS:
            raise PolicyFileError(
                f"unsupported activation {activation!r}; supported: {SUPPORTED_ACTIVATIONS}")
        if len(layer_sizes) < 2 or any(int(s) <= 0 for s in layer_sizes):
            raise PolicyFileError(f"layer_sizes must be >= 2 positive ints, got {layer_sizes}")
        self.layer_sizes = [int(s) for s in layer_sizes]
        self.activation = activation
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    @property
    def observation_dim(self) -> int:
        return self.layer_sizes[0]

    @property
    def action_dim(self) -> int:
        return self.layer_sizes[-1]

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.net(observation)

    @classmethod
    def from_weights(cls, weights: ActorWeights) -> "Actor":
        """A torch ``Actor`` holding a copy of ``weights`` (an ``ActorWeights``)."""
        actor = cls(weights.layer_sizes, weights.activation)
        actor.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32))
                               for k, v in weights.state_dict.items()})
        return actor


def load_policy(path: str | os.PathLike) -> tuple[Actor, dict[str, Any]]:
    """Read a policy file; returns ``(actor in eval mode, the whole payload dict)``.

    Raises ``PolicyFileError`` with a message that says what is wrong: missing file, not a
    nanofly policy, unsupported format version or activation, shape mismatch, NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"{path}: no such policy file")
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles: the error says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused a global (a class or function to call): never load it
        raise PolicyFileError(f"{path}: not a readable policy file: it holds Python objects "
                              f"besides tensors and plain data, which nanofly never loads "
                              f"(they could run code)") from None
    except Exception as exc:  # torch raises many types for corrupt files
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolicyFileError(f"{path}: not a readable policy file ({detail})") from None
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise PolicyFileError(f"{path}: not a nanofly policy file (missing format tag)")
    if payload.get("format_version") != POLICY_FORMAT_VERSION:
        raise PolicyFileError(f"{path}: policy format version {payload.get('format_version')} "
                              f"is not supported (expected {POLICY_FORMAT_VERSION})")
    spec = payload.get("actor")
    if not isinstance(spec, dict):
        raise PolicyFileError(f"{path}: the policy file has no actor table")
    activation = spec.get("activation")
    if activation not in SUPPORTED_ACTIVATIONS or spec.get("output_activation") != "tanh":
        raise PolicyFileError(f"{path}: unsupported activation {activation!r} / output "
                              f"{spec.get('output_activation')!r}; nanofly runs tanh MLPs")
    # sizes checked, and matched against the stored tensors, before anything is allocated
    sizes = check_layer_sizes(spec.get("layer_sizes"), where=f"{path}: ")
    state = spec.get("state_dict")
    if not isinstance(state, dict):
        raise PolicyFileError(f"{path}: the actor has no state_dict table")
    expected = parameter_shapes(sizes)
    for name, shape in expected.items():
        if name not in state:
            raise PolicyFileError(f"{path}: actor parameter {name!r} missing")
        if not isinstance(state[name], torch.Tensor) or not state[name].is_floating_point():
            raise PolicyFileError(f"{path}: actor parameter {name!r} is not a float tensor")
        if tuple(state[name].shape) != shape:
            raise PolicyFileError(f"{path}: actor parameter {name!r} has shape "
                                  f"{tuple(state[name].shape)}, layer_sizes imply {shape}")
        if not torch.isfinite(state[name]).all():
            raise PolicyFileError(f"{path}: actor parameter {name!r} has NaN or Inf values")
    extra_keys = set(state) - set(expected)
    if extra_keys:
        raise PolicyFileError(f"{path}: unexpected actor parameters {sorted(extra_keys)}")
    actor = Actor(sizes, activation)
    actor.load_state_dict(state)
    actor.eval()
    return actor, payload


def init_actor(layer_sizes: list[int], seed: int) -> Actor:
    """A freshly initialized actor (PyTorch default init), reproducible from ``seed``."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        actor = Actor(layer_sizes)
    finally:
        torch.random.set_rng_state(gen_state)
    return actor


def policy_summary(payload: dict[str, Any]) -> str:
    sizes = payload["actor"]["layer_sizes"]
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return (f"actor {'-'.join(map(str, sizes))} tanh ({n_params} parameters, "
            f"{math.ceil(n_params * 4 / 1024)} KiB float32), vehicle "
            f"{payload.get('vehicle', {}).get('preset', '?')}")

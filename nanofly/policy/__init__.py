"""nanofly.policy: the policy artifact, the bottom of the package that every stage builds on.

Everything a trained policy *is*, independent of how it was made or where it runs:

- ``nanofly.policy.file``: the policy file format (``policy.pt``) and its writer
  (``save_policy``, no torch), ``ActorWeights`` (the actor's weights as NumPy arrays), and the
  whole-or-nothing file writes (``atomic_write``) the stages use for their artifacts;
- ``nanofly.policy.actor``: the torch ``Actor`` (the MLP) and the reader ``load_policy``;
- ``nanofly.policy.int8_grid``: the int8 weight grid of the exported C model (per-row int8
  steps, power-of-two input multipliers), which quantization-aware training snaps to and the
  exporter quantizes onto.
- ``nanofly.policy.observation``: the observation/action contract (state parts with units,
  history length, action mapping), defined once: the simulator builds its observations from
  it, ``policy.pt`` records it, and the C side's compile-time sizes are checked against it.

Data flows one way: ``nanofly.policy`` <- ``nanofly.sim`` <- ``nanofly.train`` <-
``nanofly.export`` <- ``nanofly.firmware_bridge`` <- the top-level commands (``nanofly.cli``,
``nanofly.evaluate``): each imports only the ones before it (tests/test_architecture.py checks
it). This package imports no other part of nanofly. Its modules are imported on use, so that
``import nanofly.policy.file`` does not load torch.
"""

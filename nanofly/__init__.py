"""nanofly: learned low-level control of nano quadrotors.

Stages (data flows one way): ``nanofly.policy`` (the policy artifact every stage shares) ->
``nanofly.sim`` -> ``nanofly.train`` -> ``nanofly.export`` -> ``nanofly.firmware_bridge`` -> the
top-level modules (``nanofly.cli``, ``nanofly.evaluate``). Each imports only those before it.
Importing ``nanofly`` is cheap; each stage is imported on use.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]

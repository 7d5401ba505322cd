"""The ``nanofly`` command line: one subcommand per stage.

Each stage owns a light ``commands`` module with ``register(subparsers)``; heavy imports
(numba, torch) happen inside the handlers, so ``nanofly --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# One BLAS thread: at these matrix sizes a second one only adds synchronization.
# Must be set before NumPy is first imported; a user's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# (module, what it registers); order is the order in --help.
_STAGES = (
    "nanofly.train.commands",          # train
    "nanofly.evaluate",                # eval (every backend: above all stages)
    "nanofly.export.commands",         # export
    "nanofly.firmware_bridge.commands",  # flash, firmware build|emulate|status
    "nanofly.firmware_bridge.crazyflie_commands",  # crazyflie build
    "nanofly.view",                    # view (3D replay page: above all stages)
    "nanofly.sweep",                   # sweep (many trainings on Ray: above all stages)
)


def build_parser() -> argparse.ArgumentParser:
    from nanofly import __version__

    parser = argparse.ArgumentParser(
        prog="nanofly",
        description="Train end-to-end quadrotor policies in seconds, export them to C/int8 and "
                    "fly them on an (emulated) STM32F405.")
    parser.add_argument("--version", action="version", version=f"nanofly {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _STAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # stage not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

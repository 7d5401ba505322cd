"""CLI for the simulator stage: ``nanofly bench sim``."""
from __future__ import annotations


def register(sub, bench_sub) -> None:
    from . import bench_args

    p = bench_sub.add_parser("sim", help="simulator steps/s (dynamics and full env step)")
    bench_args.add_arguments(p)
    p.set_defaults(handler=_bench_sim)


def _bench_sim(args) -> int:
    from .bench import handle

    return handle(args)

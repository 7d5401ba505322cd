"""Simulator benchmark: ``python bench/bench_sim.py [--threads 2] [--envs N ...]`` prints one
JSON object (the same as ``nanofly bench sim --json``)."""
import sys

from nanofly.sim.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] + (["--json"] if "--json" not in sys.argv else [])))

"""Cold start: compile the TD3 kernels in a second process while this one compiles the simulator.

With an empty numba cache a training run first spends ~7 s compiling the simulator's kernels
(reset, step) and then ~6 s compiling the update kernels, one after the other on one core
while the other core idles. ``start_if_cold`` starts a helper process that compiles the update
kernels into numba's on-disk cache (``cache=True``) at the same time; the trainer calls
``wait()`` before its first update, and its own first call then loads them from the cache.

Only an optimization: when the cache is already warm nothing is started, and if the helper
fails or is slow the trainer compiles the kernels itself as it always did (the same code, so
the same machine code and the same numbers).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

# the helper gives up after this long (then the trainer compiles for itself)
HELPER_TIMEOUT_S = 120.0


def kernels_cached() -> bool:
    """Whether numba's cache already holds a compiled critic update kernel for the current
    source (the others are compiled and cached together with it). Unknown -> True (start
    nothing)."""
    from . import td3_kernels

    try:
        return bool(td3_kernels.update_kernel._cache._cache_file._load_index())
    except Exception:  # numba internals moved: behave as if warm
        return True


class BackgroundCompile:
    """A running helper process (see the module docstring)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.started = time.perf_counter()

    def wait(self) -> bool:
        """Wait for the helper (at most what is left of HELPER_TIMEOUT_S); True if it finished
        cleanly. A helper still running then is stopped."""
        left = max(0.0, HELPER_TIMEOUT_S - (time.perf_counter() - self.started))
        try:
            return self.process.wait(timeout=left) == 0
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False


def start_if_cold(core_kwargs: dict) -> BackgroundCompile | None:
    """Start the helper when the TD3 kernels are not cached yet; None otherwise.

    ``core_kwargs``: TD3Core's keyword arguments (the sizes and ``threads`` decide which
    kernel variants are compiled)."""
    if kernels_cached():
        return None
    spec = json.dumps({"core": core_kwargs})
    code = "import sys; from nanofly.train.compile_cache import _helper_main; _helper_main(sys.argv[1])"
    try:
        process = subprocess.Popen([sys.executable, "-c", code, spec], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    return BackgroundCompile(process)


def _helper_main(spec: str) -> None:
    """In the helper: run every kernel a training run uses once on dummy data (each call
    compiles and caches it)."""
    from .td3_core import TD3Core

    core = TD3Core(**json.loads(spec)["core"])
    try:  # the trainer compiles the acting kernel itself: it needs it from the first step
        core.warmup(acting=False)
    finally:
        core.close()

"""Where the stock Crazyflie firmware tree (crazyflie-firmware) is, for builds, SITL and tests.

One locator for everything that needs the firmware's sources or headers:

* ``$CRAZYFLIE_BASE`` when set (a user's ``git clone --recursive`` of bitcraze/crazyflie-firmware);
* otherwise, in a source checkout that has the project's shared material beside it, the release
  tarball ``../shared/crazyflie/crazyflie-firmware-2026.08.tar.gz`` (relative to the repository
  root), extracted once into the cache (``$NANOFLY_CACHE`` or ``~/.cache/nanofly``), keyed by the
  tarball's SHA-256, so later sessions reuse it;
* otherwise ``TreeNotFound``, whose message says how to provide one (tests turn it into a skip).

Nothing is ever written inside a firmware tree: ``default_autoconf`` runs the tree's own Kconfig
(``alldefconfig``, the default of an out-of-tree app build) with ``KBUILD_OUTPUT`` in the cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

ENV_VAR = "CRAZYFLIE_BASE"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TARBALL = REPO_ROOT.parent / "shared" / "crazyflie" / "crazyflie-firmware-2026.08.tar.gz"
TREE_DIR_NAME = "crazyflie-firmware"  # the tarball's top-level folder

# Include folders (relative to the tree) under which the firmware's types compile on a host.
TYPE_INCLUDE_DIRS = ("src/modules/interface", "src/hal/interface", "src/utils/interface",
                     "src/utils/interface/lighthouse", "src/config")
# Files every use here needs: the types, the out-of-tree controller API, the power distribution.
REQUIRED_FILES = ("src/modules/interface/stabilizer_types.h",
                  "src/modules/interface/controller/controller.h",
                  "src/modules/src/power_distribution_quadrotor.c",
                  "src/platform/interface/platform_defaults_cf2.h",
                  "Kconfig")


class TreeNotFound(RuntimeError):
    """No firmware tree was given and none could be found; the message says how to give one."""


class TreeError(ValueError):
    """A path given as the firmware tree is not a usable crazyflie-firmware checkout."""


def cache_root() -> Path:
    from nanofly.export.runtime import cache_dir

    return cache_dir()


def check_tree(path: str | os.PathLike) -> Path:
    """``path`` resolved, after checking it looks like a crazyflie-firmware tree; ``TreeError``
    naming the first missing file otherwise."""
    base = Path(path).expanduser()
    if not base.is_dir():
        raise TreeError(f"Crazyflie firmware tree {base}: no such directory (set "
                        f"{ENV_VAR} to a clone of bitcraze/crazyflie-firmware)")
    for rel in REQUIRED_FILES:
        if not (base / rel).is_file():
            raise TreeError(f"{base} is not a usable crazyflie-firmware tree: {rel} is missing "
                            f"(point {ENV_VAR} at the top of a `git clone --recursive` of "
                            f"bitcraze/crazyflie-firmware)")
    return base.resolve()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_tarball(tarball: Path) -> Path:
    """The tree inside ``tarball``, extracted once into the cache (atomic rename, so two
    processes extracting at once both end up with one complete tree)."""
    key = _sha256(tarball)[:16]
    dest = cache_root() / f"crazyflie-firmware-{key}"
    tree = dest / TREE_DIR_NAME
    if tree.is_dir():
        return tree
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="tar")
        if not (tmp / TREE_DIR_NAME).is_dir():
            raise TreeError(f"{tarball}: expected a top-level folder {TREE_DIR_NAME}/")
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first
            if not tree.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return tree


def locate_tree() -> Path:
    """The firmware tree to use (see the module docstring); raises ``TreeError`` for a bad
    ``$CRAZYFLIE_BASE`` and ``TreeNotFound`` when there is none."""
    given = os.environ.get(ENV_VAR)
    if given:
        return check_tree(given)
    if SHARED_TARBALL.is_file():
        return check_tree(extract_tarball(SHARED_TARBALL))
    raise TreeNotFound(f"no Crazyflie firmware tree: set {ENV_VAR} to a clone of "
                       f"bitcraze/crazyflie-firmware (git clone --recursive; release 2025.12 or "
                       f"later), or place {SHARED_TARBALL.name} at {SHARED_TARBALL.parent}")


def tree_key(base: Path) -> str:
    """A short key for a tree: its path and the bytes of the files a host build reads from it
    (the required files), so an edited or different tree gets new cached builds."""
    h = hashlib.sha256(str(Path(base).resolve()).encode())
    for rel in REQUIRED_FILES:
        h.update(rel.encode() + b"\0" + (Path(base) / rel).read_bytes())
    return h.hexdigest()[:16]


def default_autoconf(base: Path) -> Path:
    """A folder holding ``autoconf.h`` as the firmware's own Kconfig writes it for its default
    configuration (``make alldefconfig`` then ``silentoldconfig``, as an out-of-tree app build
    starts: Crazyflie 2.x platform, battery compensation on, 2.1+ propellers), generated once
    per tree into the cache with ``KBUILD_OUTPUT`` there. Needs make and a host C compiler."""
    base = check_tree(base)
    out = cache_root() / f"cf-kconfig-{tree_key(base)}"
    header = out / "include" / "generated" / "autoconf.h"
    if header.is_file():
        return header.parent
    make = shutil.which("make")
    if make is None:
        raise TreeError("make not found: needed to run the firmware's Kconfig (Debian: "
                        "apt-get install make)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for target in ("alldefconfig", "silentoldconfig"):
            res = subprocess.run([make, "-C", str(base), f"KBUILD_OUTPUT={work}", target],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                raise TreeError(f"the firmware's Kconfig failed in {base} (make {target}):\n"
                                f"{res.stdout[-1500:]}{res.stderr[-1500:]}")
        if not (work / "include" / "generated" / "autoconf.h").is_file():
            raise TreeError(f"the firmware's Kconfig in {base} wrote no autoconf.h")
        try:
            os.rename(work, out)
        except OSError:
            if not header.is_file():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return header.parent

import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
# The fuzzing drivers live with the long fuzz runs in bench/fuzz (out of the installed package);
# the fuzz tests import them from there as ``fuzzing``. (tests/helpers is importable as
# ``helpers``: pytest puts this folder on sys.path.)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "fuzz"))


@pytest.fixture(scope="session")
def golden():
    return np.load(DATA / "l2f_reference_hoversin.npz")


@pytest.fixture(scope="session")
def crazyflie_base():
    """The stock Crazyflie firmware tree (nanofly.firmware_bridge.crazyflie_tree.locate_tree:
    $CRAZYFLIE_BASE, else ../shared's release tarball extracted once into the cache); the test
    is skipped with the locator's reason when there is none."""
    from nanofly.firmware_bridge.crazyflie_tree import TreeNotFound, locate_tree

    try:
        return locate_tree()
    except TreeNotFound as exc:
        pytest.skip(str(exc))

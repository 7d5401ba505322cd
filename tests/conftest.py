from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


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

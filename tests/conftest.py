from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def golden():
    return np.load(DATA / "l2f_reference_hoversin.npz")

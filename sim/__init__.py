"""nanofly.sim: the multirotor simulator (numba kernels), vehicle presets and the hover MDP.

``VecEnv`` is imported lazily so that ``import nanofly.sim.presets`` stays light.
"""
from .presets import PRESETS, VehicleParams, crazyflie_l2f, crazyflie_paper, get_preset

__all__ = ["PRESETS", "VehicleParams", "crazyflie_l2f", "crazyflie_paper", "get_preset",
           "VecEnv", "MDPConfig", "RewardWeights"]


def __getattr__(name):
    if name in ("VecEnv", "MDPConfig", "RewardWeights", "TARGET_REWARD_WEIGHTS"):
        from . import env
        return getattr(env, name)
    raise AttributeError(f"module 'nanofly.sim' has no attribute {name!r}")

"""Train Stable-Baselines3 PPO on nanofly's hover MDP through the fast vector-env adapter, save
the model, load it back and evaluate it.

    pip install 'nanofly[sb3]'
    python docs/examples/sb3_ppo.py --total-timesteps 2000000 --out ppo_hover

The adapter (``nanofly.sim.sb3_vec_env.HoverSB3VecEnv``) steps all vehicles in one call, where
``make_vec_env`` + ``DummyVecEnv`` would step one Python environment per vehicle
(``bench/bench_sb3.py`` compares the two). The evaluation runs the hover MDP as in training
(observation noise, disturbances, 500-step episodes) and reports the mean return and how long
episodes last: 5.0 s means no episode left the 0.6 m box.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-timesteps", type=positive_int, default=2_000_000,
                        help="environment steps to train for, all vehicles together "
                             "(default 2000000)")
    parser.add_argument("--num-envs", type=positive_int, default=16,
                        help="vehicles stepped together (default 16)")
    parser.add_argument("--n-steps", type=positive_int, default=256,
                        help="PPO rollout length per vehicle (default 256)")
    parser.add_argument("--eval-episodes", type=positive_int, default=32,
                        help="evaluation episodes after training (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("ppo_hover"),
                        help="folder for the model (ppo_hover.zip) and evaluation.json "
                             "(default ./ppo_hover)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.vec_env import VecMonitor

        from nanofly.sim.sb3_vec_env import HoverSB3VecEnv
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    train_envs = VecMonitor(HoverSB3VecEnv(args.num_envs, seed=args.seed))
    model = PPO("MlpPolicy", train_envs, n_steps=args.n_steps,
                batch_size=min(1024, args.n_steps * args.num_envs), n_epochs=5, gamma=0.99,
                seed=args.seed, device="cpu", verbose=0)
    model.learn(total_timesteps=args.total_timesteps)
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "ppo_hover.zip"
    model.save(model_path)
    print(f"trained {model.num_timesteps} steps; saved {model_path}")

    # A separate environment with another seed: the evaluation episodes are not training ones.
    eval_envs = VecMonitor(HoverSB3VecEnv(min(args.num_envs, args.eval_episodes),
                                          seed=args.seed + 10_000))
    loaded = PPO.load(model_path, device="cpu")
    returns, lengths = evaluate_policy(loaded, eval_envs, n_eval_episodes=args.eval_episodes,
                                       deterministic=True, return_episode_rewards=True)
    dt_s = eval_envs.get_attr("config")[0].dt
    summary = {
        "timesteps": int(model.num_timesteps),
        "episodes": len(returns),
        "mean_return": round(float(sum(returns) / len(returns)), 3),
        "mean_episode_s": round(float(sum(lengths) / len(lengths)) * dt_s, 3),
        "model": str(model_path),
    }
    (args.out / "evaluation.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

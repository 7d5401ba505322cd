"""CLI for the training stage: ``nanofly train`` and ``nanofly eval``."""
from __future__ import annotations

ABLATIONS = ("disturbance", "observation_noise", "asymmetric_critic", "rotor_delay",
             "action_history", "curriculum")


def register(sub, bench_sub) -> None:
    p = sub.add_parser(
        "train", help="train a hover policy (TD3, asymmetric actor-critic)",
        description="Train a policy (defaults: the paper's TD3 setup with the changes measured "
                    "in docs/benchmarks.md) and save it to a run directory (policy.pt, "
                    "metrics.jsonl, config.toml, plots). Ctrl-C (or SIGTERM, SIGHUP) saves a "
                    "checkpoint (checkpoint.npz: data only) that --resume continues from. Exit "
                    "status: 0 done; 1 the run diverged or could not write its results (a "
                    "checkpoint is kept, and after a divergence the best finite snapshot as "
                    "policy.pt if checkpoint selection kept one); 2 bad input (nothing is "
                    "written); 128+N stopped by signal N.")
    p.add_argument("--out", default=None,
                   help="run directory, new or empty (default runs/<timestamp>)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None,
                   help="total environment steps (default 700000; training may stop earlier, "
                        "see stop_at_selection_success)")
    p.add_argument("--num-envs", type=int, default=None, help="parallel simulators (default 16)")
    p.add_argument("--int8-aware-steps", type=int, default=None, metavar="N",
                   help="after training, N more steps with the actor's weights on the int8 "
                        "export grid (quantization-aware; default 0: off)")
    p.add_argument("--update-threads", type=int, choices=(1, 2), default=None,
                   help="threads for the network updates (default 2: fastest on an otherwise "
                        "idle machine with 2+ cores; 1 is faster when other work keeps a core "
                        "busy; the results are the same bits either way)")
    p.add_argument("--preset", default=None, help="vehicle preset name or .toml file")
    p.add_argument("--config", default=None,
                   help="TOML file with training options (keys of TrainConfig, a [train] table)")
    for name in ABLATIONS:
        p.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false",
                       default=None, help=f"ablation: switch off {name.replace('_', ' ')}")
    p.add_argument("--eval-episodes", type=int, default=1000,
                   help="hover-suite episodes at the end (0: skip)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/checkpoint.npz")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="with --resume: read an earlier nanofly's RUN_DIR/checkpoint.pkl (a "
                        "pickle, which can run code: only a file you made yourself) and convert "
                        "it to checkpoint.npz")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.set_defaults(handler=_train)

    e = sub.add_parser(
        "eval", help="evaluate a policy in simulation (exit 1 when it misses the thresholds)",
        description="Run evaluation suites with the paper's observation noise and disturbances. "
                    "Exit status 1 when a suite misses its thresholds (CI gate), 2 on bad input.")
    e.add_argument("policy", help="policy.pt, a run directory (its policy.pt), or an export "
                                  "directory (the onnx, c-f32, c-int8 and pil backends)")
    e.add_argument("--suite", action="append", choices=("hover", "figure8"),
                   help="suite to run (repeatable; default: hover)")
    e.add_argument("--backend", default="torch",
                   help="torch | onnx | c-f32 | c-int8 | pil:URL (pil:emulate starts QEMU) | "
                        "cf-sitl (the Crazyflie app's controller and the firmware's power "
                        "distribution built for this host against $CRAZYFLIE_BASE)")
    e.add_argument("--episodes", type=int, default=None,
                   help="episodes per suite (default: hover 1000, figure8 16)")
    e.add_argument("--seed", type=int, default=None, help="evaluation seed")
    e.add_argument("--min-success", type=float, default=None,
                   help="hover threshold: minimum success rate (default 0.95)")
    e.add_argument("--max-rmse", type=float, default=None,
                   help="figure8 threshold: maximum position RMSE in m (default 0.10)")
    e.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    e.set_defaults(handler=_eval)


def _train(args) -> int:
    from .cli_train import run_train

    return run_train(args)


def _eval(args) -> int:
    import math
    import sys

    problem = None
    if args.episodes is not None and args.episodes < 1:
        problem = f"--episodes must be >= 1, got {args.episodes} (leave it out for the default)"
    elif args.min_success is not None and not 0.0 <= args.min_success <= 1.0:
        problem = f"--min-success is a fraction from 0 to 1, got {args.min_success} (0.95: 95 %)"
    elif args.max_rmse is not None and not (math.isfinite(args.max_rmse) and args.max_rmse > 0):
        problem = f"--max-rmse must be a positive number of metres, got {args.max_rmse}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from .cli_train import run_eval

    return run_eval(args)

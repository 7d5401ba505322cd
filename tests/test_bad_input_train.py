"""Bad input to ``nanofly train`` and its preset/config loaders (training side;
tests/test_bad_input_tools.py has eval, export, flash and firmware status): each case
exits with status 2 and one line naming the problem, no traceback, and leaves nothing behind
(no run directory).

The cases run as one ``nanofly train`` process each, all in a few worker threads (each
refusal takes ~1 s, mostly the interpreter's start)."""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nanofly.sim.presets import crazyflie_paper

GOOD_VEHICLE = crazyflie_paper.to_toml()


def _vehicle_with(field: str, toml_value: str) -> str:
    """The crazyflie_paper preset as TOML with one field's value replaced."""
    lines = [f"{field} = {toml_value}" if line.startswith(f"{field} = ") else line
             for line in GOOD_VEHICLE.splitlines()]
    assert lines != GOOD_VEHICLE.splitlines(), field
    return "\n".join(lines) + "\n"


# name -> (files to write {name: text or bytes}, extra arguments, words the error must contain)
# "{d}" in arguments is the case's directory. Every case trains into {d}/out unless it resumes.
CASES = {
    # presets (--preset: a name or a .toml file; sim/presets.py)
    "preset negative mass": ({"v.toml": _vehicle_with("mass", "-0.027")},
                             ["--preset", "{d}/v.toml"], ["mass", "> 0"]),
    "preset non-numeric mass": ({"v.toml": _vehicle_with("mass", '"heavy"')},
                                ["--preset", "{d}/v.toml"], ["mass", "number"]),
    "preset infinite inertia": ({"v.toml": _vehicle_with(
        "inertia", "[[inf, 0.0, 0.0], [0.0, 3.85e-06, 0.0], [0.0, 0.0, 5.9675e-06]]")},
        ["--preset", "{d}/v.toml"], ["inertia"]),
    "preset cannot lift itself": ({"v.toml": _vehicle_with("mass", "10.0")},
                                  ["--preset", "{d}/v.toml"], ["cannot lift itself"]),
    "preset unknown field": ({"v.toml": GOOD_VEHICLE + "wings = 2\n"},
                             ["--preset", "{d}/v.toml"], ["unknown field", "wings"]),
    "preset no vehicle table": ({"v.toml": "mass = 0.027\n"}, ["--preset", "{d}/v.toml"],
                                ["[vehicle]"]),
    "preset malformed toml": ({"v.toml": "[vehicle\nmass = \n"}, ["--preset", "{d}/v.toml"],
                              ["malformed TOML"]),
    "preset missing file": ({}, ["--preset", "{d}/nowhere.toml"], ["no such file"]),
    "preset unknown name": ({}, ["--preset", "crazyflie_paperr"], ["unknown preset"]),
    "preset is a directory": ({"v.toml/x": ""}, ["--preset", "{d}/v.toml"], ["v.toml"]),
    "preset not text": ({"v.toml": b"\xff\xfe\x00garbage"}, ["--preset", "{d}/v.toml"],
                        ["v.toml", "UTF-8"]),
    # training options (--config: TOML with a [train] table; TrainConfig)
    "config missing file": ({}, ["--config", "{d}/nowhere.toml"], ["no such file"]),
    "config malformed toml": ({"c.toml": "[train\n"}, ["--config", "{d}/c.toml"],
                              ["malformed TOML"]),
    "config not text": ({"c.toml": b"\x80\x81"}, ["--config", "{d}/c.toml"], ["UTF-8"]),
    "config is a directory": ({"c.toml/x": ""}, ["--config", "{d}/c.toml"], ["c.toml"]),
    "config train not a table": ({"c.toml": "train = 5\n"}, ["--config", "{d}/c.toml"],
                                 ["[train]"]),
    "config unknown option": ({"c.toml": "[train]\nlearning_rat = 0.1\n"},
                              ["--config", "{d}/c.toml"], ["unknown training option"]),
    "hidden size zero": ({"c.toml": "[train]\nactor_hidden = [64, 0]\n"},
                         ["--config", "{d}/c.toml"], ["actor_hidden", "two integers"]),
    "hidden size negative": ({"c.toml": "[train]\ncritic_hidden = [-64, 64]\n"},
                             ["--config", "{d}/c.toml"], ["critic_hidden"]),
    "hidden three layers": ({"c.toml": "[train]\nactor_hidden = [64, 64, 64]\n"},
                            ["--config", "{d}/c.toml"], ["actor_hidden", "two hidden layers"]),
    "hidden size a number": ({"c.toml": "[train]\nactor_hidden = 64\n"},
                             ["--config", "{d}/c.toml"], ["actor_hidden", "list"]),
    "hidden size a string": ({"c.toml": "[train]\ncritic_hidden = \"64\"\n"},
                             ["--config", "{d}/c.toml"], ["critic_hidden"]),
    "hidden size too wide": ({"c.toml": "[train]\nactor_hidden = [1000000, 64]\n"},
                             ["--config", "{d}/c.toml"], ["actor_hidden", "2048"]),
    "learning rate not a number": ({"c.toml": "[train]\nlearning_rate = \"fast\"\n"},
                                   ["--config", "{d}/c.toml"], ["learning_rate", "number"]),
    "batch size not an integer": ({"c.toml": "[train]\nbatch_size = 1.5\n"},
                                  ["--config", "{d}/c.toml"], ["batch_size", "integer"]),
    "adam betas out of range": ({"c.toml": "[train]\nadam_betas = [0.9, 1.5]\n"},
                                ["--config", "{d}/c.toml"], ["adam_betas"]),
    "reward weights not a table": ({"c.toml": "[train]\ninitial_reward_weights = 3\n"},
                                   ["--config", "{d}/c.toml"], ["initial_reward_weights"]),
    "reward weight not a number": ({"c.toml": "[train.initial_reward_weights]\n"
                                              "position = \"far\"\n"},
                                   ["--config", "{d}/c.toml"],
                                   ["initial_reward_weights", "position"]),
    "negative history": ({"c.toml": "[train]\nhistory_length = -1\n"},
                         ["--config", "{d}/c.toml"], ["history_length"]),
    "negative warm-up": ({"c.toml": "[train]\ncritic_warmup_steps = -10\n"},
                         ["--config", "{d}/c.toml"], ["critic_warmup_steps", ">= 0"]),
    "preset option not a string": ({"c.toml": "[train]\npreset = 5\n"},
                                   ["--config", "{d}/c.toml"], ["preset", "string"]),
    "gamma above one": ({"c.toml": "[train]\ngamma = 2.0\n"}, ["--config", "{d}/c.toml"],
                        ["gamma"]),
    "nan learning rate": ({"c.toml": "[train]\nlearning_rate = nan\n"},
                          ["--config", "{d}/c.toml"], ["learning_rate", "finite"]),
    # command-line values
    "zero steps": ({}, ["--steps", "0"], ["total_env_steps", ">= 1"]),
    "zero envs": ({}, ["--num-envs", "0"], ["num_envs", ">= 1"]),
    "negative int8-aware steps": ({}, ["--int8-aware-steps", "-5"], ["int8_aware_steps"]),
    "zero n-step returns": ({"c.toml": "[train]\nn_step_returns = 0\n"},
                            ["--config", "{d}/c.toml"], ["n_step_returns", ">= 1"]),
    "trust flag without resume": ({}, ["--trust-checkpoint"], ["--resume"]),
    # resuming
    "resume without checkpoint": ({"run/config.toml": ""}, ["--resume", "{d}/run"],
                                  ["no checkpoint to resume from"]),
    "resume a directory that is not there": ({}, ["--resume", "{d}/nowhere"],
                                             ["no checkpoint to resume from"]),
    "resume random bytes": ({"run/checkpoint.npz": b"PK\x03\x04" + bytes(100)},
                            ["--resume", "{d}/run"], ["not a readable nanofly checkpoint"]),
    "resume foreign zip": ({"run/checkpoint.npz": "zip"}, ["--resume", "{d}/run"],
                           ["no nanofly-checkpoint format tag"]),
    "resume bad config in checkpoint": ({"run/checkpoint.npz": "ck:bad-config"},
                                        ["--resume", "{d}/run"],
                                        ["not a usable nanofly checkpoint", "num_envs"]),
    "resume checkpoint without state": ({"run/checkpoint.npz": "ck:no-state"},
                                        ["--resume", "{d}/run"],
                                        ["not a usable nanofly checkpoint", "state"]),
}


def _write(directory: Path, files: dict) -> None:
    from nanofly.train.checkpoint_file import save_checkpoint

    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "zip":
            import zipfile
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("checkpoint.json", json.dumps({"format": "other"}))
        elif isinstance(content, str) and content.startswith("ck:"):
            small = {"total_env_steps": 1000, "num_envs": 8, "critic_warmup_steps": 500,
                     "actor_warmup_steps": 1000}
            if content == "ck:bad-config":
                ck = {"config": {**small, "num_envs": "eight"}, "state": {}}
            else:  # a valid configuration, nothing else
                ck = {"config": small}
            save_checkpoint(path, ck)
        elif name.endswith("/x"):  # a directory named like the file
            path.parent.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _run_case(name: str, tmp_path: Path):
    files, args, needles = CASES[name]
    d = tmp_path / name.replace(" ", "_")
    d.mkdir()
    _write(d, files)
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    argv = [a.replace("{d}", str(d)) for a in args]
    if "--resume" not in argv:
        argv += ["--out", str(d / "out")]
    # (a case's own --steps comes later and wins)
    proc = subprocess.run([sys.executable, "-m", "nanofly", "train", "--steps", "1000",
                           "--eval-episodes", "0", "--no-plots", "--json", *argv],
                          capture_output=True, text=True, timeout=300, cwd=d)
    after = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    return proc, before, after, needles


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad_input_train")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run_case, name, tmp_path) for name in CASES}
        return {name: future.result() for name, future in futures.items()}


def test_the_sweep_has_enough_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", list(CASES))
def test_bad_train_input_is_one_line_exit_2_and_leaves_nothing(results, name):
    proc, before, after, needles = results[name]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert after == before, f"left behind: {sorted(set(after) - set(before))}"

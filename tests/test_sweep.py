"""nanofly sweep: the same policies as nanofly train alone, a real Ray cluster started with the
ray CLI (a worker killed mid-trial: the trial runs again and finishes), and bad input refused
before any trial starts. Trainings are tiny (a few thousand steps, no evaluation)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason='nanofly sweep needs Ray: pip install "nanofly[sweep]"')

TINY = ("[train]\ncritic_warmup_steps = 500\nactor_warmup_steps = 1000\nlog_interval = 500\n"
        "batch_size = 64\ntotal_env_steps = 2000\nselection_interval = 0\n")
# no evaluation, no plots: the trainings themselves are what is compared
QUICK = ["--figure8-episodes", "0", "--no-plots", "--set", "eval_episodes=0"]
# the cluster's auth mode is the same on the head and the driver (Ray's rule); a test cluster
# on 127.0.0.1 needs none
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def _nanofly(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "nanofly", *args], capture_output=True,
                          text=True, env=env, **kw)


def _actor_and_config(policy_path: Path):
    import torch

    payload = torch.load(policy_path, weights_only=True)
    return payload["actor"]["state_dict"], payload["train_config"]


def _same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_local_sweep_trains_the_same_policies_as_train_alone_and_resumes(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "sweep"
    command = ["sweep", "--out", str(out), "--seeds", "1", "--set", "learning_rate=1e-3,5e-4",
               "--config", str(config), "--cpus-per-trial", "1", *QUICK]
    # the same trial as a plain `nanofly train` run, trained meanwhile
    alone = tmp_path / "alone"
    train = subprocess.Popen(
        [sys.executable, "-m", "nanofly", "train", "--out", str(alone), "--seed", "1",
         "--config", str(config), "--eval-episodes", "0", "--no-plots", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = _nanofly(*command, "--json", timeout=600)
    train_stderr = train.communicate(timeout=600)[1]
    assert train.returncode == 0, train_stderr
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["trials"], summary["ok"], summary["skipped_finished_earlier"]) == (2, 2, 0)
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert [(r["seed"], r["parameters"]["learning_rate"]) for r in rows] == [(1, 1e-3), (1, 5e-4)]
    assert all(r["status"] == "ok" and r["env_steps"] == 2000 and r["time_to_policy_s"] > 0
               for r in rows)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["trial", "seed", "learning_rate", "status"]
    assert (out / "best_policy.pt").is_file() and (out / "summary.png").is_file()
    # the trial with the same options as the plain run: the same weights, bit for bit
    trial = out / "learning_rate=0.0005_seed1"
    assert (trial / "config.toml").is_file() and (trial / "metrics.jsonl").is_file()
    swept_actor, swept_config = _actor_and_config(trial / "policy.pt")
    alone_actor, alone_config = _actor_and_config(alone / "policy.pt")
    assert swept_config["learning_rate"] == 5e-4 and alone_config["learning_rate"] == 1e-3
    assert not _same_tensors(swept_actor, alone_actor)  # the comparison can fail
    same = out / "learning_rate=0.001_seed1"
    assert _same_tensors(_actor_and_config(same / "policy.pt")[0], alone_actor)
    # the same command again: every trial is skipped, nothing is trained again
    mtime = (same / "policy.pt").stat().st_mtime_ns
    again = _nanofly(*command, "--json", timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped_finished_earlier"] == 2
    assert (same / "policy.pt").stat().st_mtime_ns == mtime


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head on 127.0.0.1 started with the ray CLI (2 CPUs); `ray stop` always after
    (it stops every Ray of this user on the machine: the CLI has no other way)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        start = subprocess.run(
            ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
            capture_output=True, text=True, env=RAY_ENV, timeout=180)
        assert start.returncode == 0, start.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=RAY_ENV, timeout=120)


def _process_of(pattern: str, timeout_s: float) -> tuple[int, int]:
    """(pid, parent pid) of the first process whose command line matches ``pattern``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if re.search(pattern, cmdline):
                    ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    return int(proc.name), ppid
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.05)
    raise AssertionError(f"no process matching {pattern!r} within {timeout_s} s")


def test_cluster_sweep_retries_a_trial_whose_worker_was_killed(tmp_path, ray_cluster):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("total_env_steps = 2000", "total_env_steps = 6000"))
    out = tmp_path / "sweep"
    # object-store: the run directories come back as tars, as from another node
    sweep = subprocess.Popen(
        [sys.executable, "-m", "nanofly", "sweep", "--out", str(out), "--seeds", "0-1",
         "--config", str(config), "--cpus-per-trial", "1", "--address", ray_cluster,
         "--transfer", "object-store", "--json", *QUICK],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=RAY_ENV)
    try:
        # seed 0's training process; its parent is the Ray worker running the trial's task
        train_pid, worker_pid = _process_of(r"nanofly train .*--out \S*nanofly-sweep-\w+/seed0 ",
                                            timeout_s=120)
        os.kill(worker_pid, signal.SIGKILL)
        stdout, stderr = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["ok"] == 2
    rows = {r["trial"]: r for r in json.loads((out / "results.json").read_text())["trials"]}
    assert rows["seed0"]["attempts"] == 2 and rows["seed1"]["attempts"] == 1
    assert rows["seed0"]["status"] == "ok" and rows["seed0"]["env_steps"] == 6000
    for name in ("seed0", "seed1"):  # unpacked from the object store into --out
        assert (out / name / "policy.pt").is_file() and (out / name / "summary.json").is_file()
    assert not Path(f"/proc/{train_pid}").exists()  # the killed worker's training died with it


@pytest.mark.parametrize("case, args, files, message", [
    ("unknown key", ["--set", "learning_rat=1e-3,1e-4"], {}, "unknown option 'learning_rat'"),
    ("bad value", ["--set", "batch_size=64,0"], {}, "batch_size"),
    ("zero trials", ["--spec", "{d}/spec.toml"], {"spec.toml": "[set]\nlearning_rate = []\n"},
     "no values"),
    ("bad seeds", ["--seeds", "5-2"], {}, "runs backwards"),
    ("unreachable address", ["--address", "127.0.0.1:{port}"], {}, "no Ray head answers"),
    ("unwritable out", ["--out", "{d}/file/sweep"], {"file": "x"}, "cannot write --out"),
    ("out holds other files", ["--out", "{d}/other"], {"other/notes.txt": "x"},
     "holds other files"),
])
def test_bad_input_is_refused_before_any_trial(tmp_path, case, args, files, message):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [a.format(d=tmp_path, port=port) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "sweep")]
    proc = _nanofly("sweep", "--seeds", "0", *args, timeout=120)
    assert proc.returncode == 2, (case, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, (case, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, (case, proc.stderr)
    assert not (tmp_path / "sweep").exists()  # nothing was started or written


def test_without_ray_the_error_names_the_extra(tmp_path):
    script = ("import sys; sys.modules['ray'] = None\n"  # `import ray` fails as if not installed
              "from nanofly.cli import main\n"
              f"sys.exit(main(['sweep', '--out', {str(tmp_path / 'sweep')!r}]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('error: nanofly sweep needs Ray, which is not installed: '
                                   'pip install "nanofly[sweep]"')


def test_trials_grid_samples_and_vehicle_fields():
    from types import SimpleNamespace

    from nanofly.sweep import plans_from_args

    def plans(*sets, samples=0, seeds="0-1"):
        return plans_from_args(SimpleNamespace(
            spec=None, seeds=seeds, set=list(sets), samples=samples, sample_seed=0, config=None,
            cpus_per_trial=2, figure8_episodes=0))

    grid = plans("no-curriculum=false,true", "vehicle.mass=0.027,0.03", "steps=5000")
    assert len(grid) == 8 and len({p.name for p in grid}) == 8
    first = grid[0]
    assert first.name == "no_curriculum=off_mass=0.027_seed0"
    assert first.train["curriculum"] is True and first.train["total_env_steps"] == 5000
    assert "mass = 0.027" in first.vehicle_toml and "mass = 0.03\n" in grid[2].vehicle_toml
    drawn = plans("learning_rate=log:1e-4..1e-2", "batch_size=64,128", samples=5, seeds="3")
    again = plans("learning_rate=log:1e-4..1e-2", "batch_size=64,128", samples=5, seeds="3")
    assert [p.train for p in drawn] == [p.train for p in again]  # a re-run makes the same trials
    assert len({p.train["learning_rate"] for p in drawn}) == 5
    assert all(1e-4 <= p.train["learning_rate"] <= 1e-2 for p in drawn)

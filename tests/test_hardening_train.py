"""Training-side hardening: files from others never run code or allocate what they
claim, diverging runs end cleanly, late failures keep the run, run directories are not reused.

Each crafted file here would create a marker directory if anything unpickled it; the tests
check the marker never appears and the user gets one line saying what is wrong."""
import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nanofly.train.checkpoint_file import (CheckpointFileError, load_checkpoint,
                                           save_checkpoint)
from nanofly.train.td3 import TrainConfig, Trainer, run_loop

SMALL = dict(total_env_steps=2000, num_envs=8, critic_warmup_steps=500, actor_warmup_steps=1000,
             curriculum_interval=1000, log_interval=500, batch_size=64)
REPO = Path(__file__).resolve().parents[1]


class _MakeMarker:
    """Unpickling this calls os.mkdir(path): the proof that a file's code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "nanofly", *args], capture_output=True,
                          text=True, timeout=300, **kw)


def _one_line_error(proc, *needles, status=2):
    """The command failed with ``status`` and one stderr line naming the problem."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith("note: ")]  # notes are not errors
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _small_checkpoint(steps=1000, **changes):
    cfg = TrainConfig(**{**SMALL, **changes})
    trainer = Trainer(cfg)
    trainer.cfg = TrainConfig(**{**SMALL, **changes, "total_env_steps": steps})
    run_loop(trainer)
    trainer.cfg = cfg
    return trainer.checkpoint()


# ------------------------------------------------------------------ finding 1: checkpoints
def test_crafted_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    """An old-format checkpoint.pkl that would run code: --resume refuses it in one line (naming
    the trust flag) and nothing in it runs; the same bytes as checkpoint.npz are no checkpoint."""
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    evil = pickle.dumps({"config": _MakeMarker(marker)})
    (run / "checkpoint.pkl").write_bytes(evil)
    line = _one_line_error(_cli("train", "--resume", str(run)), "checkpoint.pkl", "pickle",
                           "--trust-checkpoint")
    assert "runs any code" in line
    assert not marker.exists()
    (run / "checkpoint.npz").write_bytes(evil)
    _one_line_error(_cli("train", "--resume", str(run)), "checkpoint.npz",
                    "not a readable nanofly checkpoint")
    assert not marker.exists()
    with pytest.raises(CheckpointFileError):
        load_checkpoint(run / "checkpoint.npz")
    assert not marker.exists()


def _crafted_npz(path, members: dict[str, bytes], meta=None, compress=()):
    with zipfile.ZipFile(path, "w") as archive:
        meta = meta or {"format": "nanofly-checkpoint", "format_version": 1,
                        "checkpoint": {"x": {"$array": "arrays/0.npy"}}}
        archive.writestr("checkpoint.json", json.dumps(meta))
        for name, data in members.items():
            archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name in compress
                             else zipfile.ZIP_STORED)
    return path


def _npy(array, allow_pickle=False) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, array, allow_pickle=allow_pickle)
    return f.getvalue()


def _npy_header_only(shape, dtype="<f4") -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False,
                                             "shape": shape})
    return f.getvalue() + b"\0" * 64


def test_crafted_checkpoint_arrays_never_run_code_or_allocate(tmp_path):
    """An object array (a pickle inside the .npy), a header claiming terabytes, a compressed
    member that would inflate, one member referenced many times: each refused by name, before
    any allocation, and no code runs."""
    marker = tmp_path / "marker"
    pickled = np.empty(1, dtype=object)
    pickled[0] = _MakeMarker(marker)
    cases = {
        "object": (_crafted_npz(tmp_path / "object.npz",
                                {"arrays/0.npy": _npy(pickled, allow_pickle=True)}),
                   "dtype object"),
        "huge": (_crafted_npz(tmp_path / "huge.npz",
                              {"arrays/0.npy": _npy_header_only((10 ** 12,))}),
                 "does not match"),
        "compressed": (_crafted_npz(tmp_path / "zipped.npz",
                                    {"arrays/0.npy": _npy(np.zeros(1 << 20, np.float32))},
                                    compress=("arrays/0.npy",)),
                       "compressed"),
        "repeated": (_crafted_npz(tmp_path / "repeated.npz",
                                  {"arrays/0.npy": _npy(np.zeros(1000, np.float32))},
                                  meta={"format": "nanofly-checkpoint", "format_version": 1,
                                        "checkpoint": [{"$array": "arrays/0.npy"}] * 1000}),
                     "used twice"),
        "negative": (_crafted_npz(tmp_path / "negative.npz",
                                  {"arrays/0.npy": _npy_header_only((-1, -1))}), "shape"),
        "foreign": (_crafted_npz(tmp_path / "foreign.npz", {},
                                 meta={"format": "something-else"}), "format tag"),
        "deep": (_crafted_npz(tmp_path / "deep.npz", {},
                              meta={"format": "nanofly-checkpoint", "format_version": 1,
                                    "checkpoint": json.loads("[" * 100 + "]" * 100)}),
                 "nested too deeply"),
    }
    for name, (path, needle) in cases.items():
        with pytest.raises(CheckpointFileError, match=needle):
            load_checkpoint(path)
        assert not marker.exists(), name
    # numpy's own reader refuses the object array too (allow_pickle=False)
    with np.load(cases["object"][0], allow_pickle=False) as npz, pytest.raises(ValueError):
        npz["arrays/0"]
    assert not marker.exists()
    # and through the command line: one line, exit status 2
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(cases["object"][0].read_bytes())
    _one_line_error(_cli("train", "--resume", str(run)), "dtype object")
    assert not marker.exists()


def test_checkpoint_file_round_trip_keeps_every_value_and_resumes_bit_identically(tmp_path):
    """The data-only format holds the whole checkpoint: arrays bit for bit (dtype and shape),
    numbers, NaN, nested lists; a resume from the file matches the uninterrupted run."""
    from nanofly.train.td3 import train

    cfg = TrainConfig(**SMALL, seed=11)
    full = train(cfg)
    ck = _small_checkpoint(1000, seed=11)
    ck["state"]["recent_returns"].append(float("nan"))  # non-finite numbers survive too
    path = save_checkpoint(tmp_path / "checkpoint.npz", ck)
    back = load_checkpoint(path)
    assert np.isnan(back["state"]["recent_returns"][-1])
    ck["state"]["recent_returns"].pop(), back["state"]["recent_returns"].pop()

    def same(a, b, where=""):
        if isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
        elif isinstance(a, dict):
            assert set(a) == set(b), where
            for k in a:
                same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a == b and type(a) is type(b), where

    same(ck, back)
    # the file is an npz that numpy reads without pickles
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["arrays/0"], back["core"]["params"])
    resumed = train(cfg, resume=back)
    assert np.array_equal(resumed.core.params, full.core.params)
    assert np.array_equal(resumed.buffer.data[:full.buffer.size],
                          full.buffer.data[:full.buffer.size])


def test_old_pickle_checkpoint_converts_only_with_the_trust_flag(tmp_path):
    """A genuine checkpoint.pkl of an earlier nanofly: refused without --trust-checkpoint;
    with it converted to checkpoint.npz (the pickle removed) and the run finishes."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pkl").write_bytes(pickle.dumps(_small_checkpoint(1000)))
    common = ("--eval-episodes", "0", "--no-plots", "--json")
    _one_line_error(_cli("train", "--resume", str(run), *common), "--trust-checkpoint")
    out = _cli("train", "--resume", str(run), "--trust-checkpoint", *common)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["env_steps"] == SMALL["total_env_steps"]
    assert "converted" in out.stderr
    assert not (run / "checkpoint.pkl").exists() and (run / "policy.pt").is_file()


# ---------------------------------------------------------- untrusted policy files (reader)
def _crafted_policies(tmp_path, marker):
    """policy.pt files whose payload would call os.mkdir(marker) when unpickled: torch's zip
    layout (what save_policy writes) and a bare pickle."""
    import torch

    zipped = tmp_path / "zipped.pt"
    torch.save({"format": "nanofly-policy", "format_version": 1, "payload": _MakeMarker(marker)},
               zipped)
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pickle.dumps({"format": "nanofly-policy", "x": _MakeMarker(marker)}))
    return zipped, bare


def test_crafted_pickle_policy_never_runs(tmp_path):
    """load_policy (the one reader behind eval, export, calibration and the firmware bridge)
    refuses pickled code in a policy file; `nanofly eval` and `nanofly export` say so in one
    line with exit status 2."""
    from nanofly.policy.actor import PolicyFileError, load_policy

    marker = tmp_path / "marker"
    for path in _crafted_policies(tmp_path, marker):
        with pytest.raises(PolicyFileError, match="not a readable policy file"):
            load_policy(path)
        assert not marker.exists()
        _one_line_error(_cli("eval", str(path), "--episodes", "1"), str(path))
        assert not marker.exists()
        proc = _cli("export", str(path), "--out", str(tmp_path / f"export-{path.stem}"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert not marker.exists()
        assert not (tmp_path / f"export-{path.stem}").exists()


def test_every_file_reader_in_nanofly_is_data_only():
    """The source audit behind "crafted files never run code": in nanofly's own modules every
    torch.load call passes weights_only=True, every np.load allow_pickle=False, and the only
    unpickling is the legacy checkpoint reader that --trust-checkpoint gates."""
    import ast

    calls = []
    for path in sorted(REPO.glob("*/**/*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.split("/")[0] in ("tests", "bench") or ".egg-info" in rel:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            name = f"{node.func.value.id}.{node.func.attr}"
            keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            calls.append((rel, name, keywords))
    readers = [c for c in calls if c[1] in ("torch.load", "np.load", "numpy.load")
               or c[1].split(".")[0] in ("pickle", "marshal", "shelve", "dill", "joblib")]
    assert any(c[1] == "torch.load" for c in readers), "the audit found no torch.load at all"
    for rel, name, keywords in readers:
        if name == "torch.load":
            assert keywords.get("weights_only") is True, (rel, name, keywords)
        elif name in ("np.load", "numpy.load"):
            assert keywords.get("allow_pickle") is False, (rel, name, keywords)
        elif name not in ("pickle.dumps", "pickle.dump"):
            assert (rel, name) == ("train/checkpoint_file.py", "pickle.load"), (rel, name)


# ------------------------------------------------------ finding 6: crafted policy sizes
def test_crafted_layer_sizes_are_refused_before_anything_is_allocated(tmp_path):
    """layer_sizes are checked (types, bounds, parameter count) and matched against the stored
    tensors before the Actor is built: [146, 10**9, 4] would ask for 584 GB."""
    import torch

    from nanofly.policy.actor import PolicyFileError, init_actor, load_policy, save_policy

    base = save_policy(tmp_path / "policy.pt", init_actor([146, 64, 64, 4], 0),
                       observation={"dim": 146}, action={"dim": 4},
                       vehicle={"preset": "crazyflie_paper"})
    cases = {
        "huge hidden layer": ([146, 10 ** 9, 4], "layer_sizes must be"),
        "too many parameters": ([60_000, 60_000, 4], "parameters; nanofly reads at most"),
        "negative": ([146, -64, 4], "layer_sizes must be"),
        "not numbers": (["146", "64", "4"], "layer_sizes must be"),
        "bools": ([True, True], "layer_sizes must be"),
        "one layer": ([146], "layer_sizes must be"),
        "too deep": ([4] * 40, "layer_sizes must be"),
        "missing": (None, "layer_sizes must be"),
        "other tensors": ([146, 32, 32, 4], "has shape"),
    }
    for name, (sizes, needle) in cases.items():
        payload = torch.load(base, weights_only=True)
        if sizes is None:
            del payload["actor"]["layer_sizes"]
        else:
            payload["actor"]["layer_sizes"] = sizes
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save(payload, path)
        with pytest.raises(PolicyFileError, match=needle):
            load_policy(path)
    # a state_dict that is not a table of float tensors
    payload = torch.load(base, weights_only=True)
    payload["actor"]["state_dict"]["net.0.weight"] = [[0.0] * 146] * 64
    torch.save(payload, tmp_path / "list_weights.pt")
    with pytest.raises(PolicyFileError, match="not a float tensor"):
        load_policy(tmp_path / "list_weights.pt")
    # the command line: one line, exit status 2
    _one_line_error(_cli("eval", str(tmp_path / "huge_hidden_layer.pt")), "layer_sizes")
    assert load_policy(base)[0].layer_sizes == [146, 64, 64, 4]  # the genuine file still loads


# ------------------------------------------------------------- finding 2: divergence
DIVERGING = ("[train]\ncritic_warmup_steps = 500\nactor_warmup_steps = 1000\nlog_interval = 250\n"
             "batch_size = 64\nnum_envs = 8\nlearning_rate = 1e20\n")  # NaN at the first updates


def _strict_json_lines(path):
    def refuse(constant):
        raise ValueError(f"{path}: bare {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_diverging_run_stops_cleanly_and_says_no_policy_was_kept(tmp_path):
    """A huge learning rate: the run stops at the first non-finite loss with one line, keeps
    no policy (none was selected) and says so, saves a checkpoint that resumes (and diverges
    again, the same way); metrics.jsonl is strict JSON with null for the losses before the
    first update."""
    config = tmp_path / "diverge.toml"
    config.write_text(DIVERGING)
    run = tmp_path / "run"
    common = ("--eval-episodes", "0", "--no-plots", "--json")
    line = _one_line_error(_cli("train", "--config", str(config), "--out", str(run),
                                "--steps", "3000", *common),
                           "training diverged at", "no policy saved", "checkpoint.npz",
                           status=1)
    assert "learning_rate" in line
    assert not (run / "policy.pt").exists()
    ck = load_checkpoint(run / "checkpoint.npz")
    stopped_at = ck["state"]["env_steps"]
    assert 500 <= stopped_at < 3000
    rows = _strict_json_lines(run / "metrics.jsonl")
    assert rows[0]["critic_loss"] is None and rows[0]["actor_loss"] is None  # no update yet
    assert all(r["critic_loss"] is None or np.isfinite(r["critic_loss"]) for r in rows)
    again = _one_line_error(_cli("train", "--resume", str(run), *common), "training diverged at",
                            status=1)
    assert load_checkpoint(run / "checkpoint.npz")["state"]["env_steps"] > stopped_at
    assert "Traceback" not in again


def test_diverging_run_keeps_the_best_finite_snapshot_as_the_policy(tmp_path):
    """With selection checks before the divergence, the best finite snapshot is saved as the
    policy (it loads: finite weights) and the policy file records the divergence."""
    from nanofly.policy.actor import load_policy

    config = tmp_path / "diverge.toml"
    config.write_text(DIVERGING + "selection_start = 256\nselection_interval = 256\n"
                      "selection_episodes = 16\n")
    run = tmp_path / "run"
    line = _one_line_error(_cli("train", "--config", str(config), "--out", str(run), "--steps",
                                "3000", "--eval-episodes", "0", "--no-plots", "--json"),
                           "training diverged at", "kept the best finite snapshot", status=1)
    assert str(run / "policy.pt") in line
    actor, payload = load_policy(run / "policy.pt")  # refuses NaN weights
    diverged = payload["metrics"]["diverged"]
    assert diverged["env_steps"] == load_checkpoint(run / "checkpoint.npz")["state"]["env_steps"]
    assert "loss" in diverged["reason"] or "actions" in diverged["reason"]
    assert payload["metrics"]["selected_snapshot"]["env_steps"] < diverged["env_steps"]


def test_non_finite_actor_is_caught_before_the_step_and_before_selection():
    """An actor whose weights went NaN (a finite loss can precede it): Diverged at the next
    environment step, with the buffer's rows taken back; and at a selection check, before it
    is scored or kept. A run that does not diverge reports null losses only before its first
    update."""
    from nanofly.train.td3 import Diverged

    cfg = TrainConfig(**{**SMALL, "total_env_steps": 1200, "selection_start": 1000,
                         "selection_interval": 1000, "selection_episodes": 8})
    trainer = Trainer(cfg)
    assert trainer.metrics()["critic_loss"] is None  # before the first update: null, not NaN
    run_loop(trainer)
    assert trainer.best_actor_params is not None and trainer.metrics()["critic_loss"] is not None
    na = trainer.core.n_actor_params
    trainer.core.params[na // 2] = np.nan
    ptr, size, steps = trainer.buffer.ptr, trainer.buffer.size, trainer.state.env_steps
    with pytest.raises(Diverged, match="actions are not finite"):
        trainer.step()
    assert (trainer.buffer.ptr, trainer.buffer.size, trainer.state.env_steps) == (ptr, size, steps)
    # the target actor (what selection scores) gone NaN: refused, nothing recorded or kept
    best = trainer.best_actor_params.copy()
    history = list(trainer.state.selection_history)
    trainer.core.targets[0] = np.inf
    with pytest.raises(Diverged, match="weights hold NaN or Inf"):
        trainer._select()
    assert trainer.state.selection_history == history
    assert np.array_equal(trainer.best_actor_params, best) and np.isfinite(best).all()


# ---------------------------------------------- finding 3: late failures keep the run
def _small_run_dir(tmp_path, steps=1000):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.npz", _small_checkpoint(steps))
    return run


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_late_write_failures_keep_a_checkpoint_and_the_run_finishes_later(tmp_path):
    """The metrics log on a full disk (/dev/full), the policy file and summary.json not
    writable: each ends with one line, exit status 1 and a checkpoint; the last --resume, with
    the disk fixed, finishes the run from where it stopped."""
    run = _small_run_dir(tmp_path)
    common = ("--eval-episodes", "0", "--no-plots", "--json")

    def resume():
        return _cli("train", "--resume", str(run), *common)

    (run / "metrics.jsonl").symlink_to("/dev/full")
    _one_line_error(resume(), "training stopped at", "No space left on device",
                    "checkpoint.npz", status=1)
    assert 1500 <= load_checkpoint(run / "checkpoint.npz")["state"]["env_steps"] < 2000  # 1st log
    (run / "metrics.jsonl").unlink()
    (run / "policy.pt").mkdir()  # the policy file cannot be replaced
    _one_line_error(resume(), "saving its results failed", "checkpoint.npz", status=1)
    assert load_checkpoint(run / "checkpoint.npz")["state"]["env_steps"] == 2000
    (run / "policy.pt").rmdir()
    (run / "summary.json").mkdir()
    _one_line_error(resume(), "saving its results failed", "summary.json", status=1)
    assert (run / "checkpoint.npz").is_file() and (run / "policy.pt").is_file()
    (run / "summary.json").rmdir()
    done = resume()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["env_steps"] == 2000
    assert not (run / "checkpoint.npz").exists()
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 2000


def test_write_probe_writes_bytes_and_a_failed_start_leaves_nothing(tmp_path):
    """A file-size limit (as a full disk or quota) lets an empty file be created but no bytes
    written: the probe writes real bytes, so the run is refused at once in one line (exit 2)
    and the directory it would have created is gone again."""
    out = tmp_path / "new" / "run"
    limited = ("import resource, runpy, sys; "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
               "sys.argv = ['nanofly'] + sys.argv[1:]; "
               "runpy.run_module('nanofly', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", limited, "train", "--out", str(out), "--steps",
                           "1000", "--json"], capture_output=True, text=True, timeout=300)
    _one_line_error(proc, "cannot write the run directory", str(out))
    assert not out.exists() and not out.parent.exists()


# ----------------------------------------------------- finding 8: run-directory reuse
def test_a_new_run_refuses_a_used_out_directory(tmp_path):
    """--out that holds files (an earlier run) is refused in one line naming --resume, and
    nothing in it changes; --out that is a file likewise."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "policy.pt").write_bytes(b"an earlier run's policy")
    line = _one_line_error(_cli("train", "--out", str(used), "--steps", "1000", "--json"),
                           "not empty", "policy.pt", f"--resume {used}")
    assert "give a new directory" in line
    assert sorted(p.name for p in used.iterdir()) == ["policy.pt"]
    assert (used / "policy.pt").read_bytes() == b"an earlier run's policy"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _one_line_error(_cli("train", "--out", str(a_file), "--steps", "1000", "--json"),
                    "is a file")
    assert a_file.read_text() == "x"

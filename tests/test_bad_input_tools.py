"""Malformed input to `nanofly eval`, `export`, `flash` and `firmware status|emulate`: each case
gives exit status 2, one line on stderr that names the problem (and what to do), nothing on
stdout, no traceback, and leaves no file behind. (The training side's sweep is in
tests/test_hardening_train.py.)

Everything here fails before a simulator rollout, a board or QEMU is needed, so the cases run
in-process through ``nanofly.cli.main``: an exception escaping it fails the case."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nanofly.sim.presets import PRESETS
from nanofly.policy.actor import init_actor, save_policy

from helpers.exports import quick_export, write_tampered_policy

UNUSED_PORT = "socket://127.0.0.1:9"  # never reached: every case fails before connecting


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A policy, broken copies of it, an export directory and broken copies of that."""
    work = tmp_path_factory.mktemp("bad_input")
    paper = PRESETS["crazyflie_paper"].to_dict()
    good = save_policy(work / "good.pt", init_actor([146, 8, 4], 0),
                       observation={"dim": 146, "history_length": 32}, action={"dim": 4},
                       vehicle={"preset": "crazyflie_paper", "params": paper},
                       mdp={"history_length": 32})

    def params(**changes):
        return lambda p: p["vehicle"]["params"].update(changes)
    write_tampered_policy(work / "negative_mass.pt", good, params(mass=-0.027))
    write_tampered_policy(work / "text_mass.pt", good, params(mass="heavy"))
    write_tampered_policy(work / "file_preset.pt", good,
                          lambda p: p.__setitem__("vehicle", {"preset": "../../quad.toml"}))
    write_tampered_policy(work / "no_layer_sizes.pt", good, lambda p: p["actor"].pop("layer_sizes"))
    write_tampered_policy(work / "text_history.pt", good,
                          lambda p: p["mdp"].__setitem__("history_length", "long"))
    write_tampered_policy(work / "wrong_history.pt", good,
                          lambda p: p["mdp"].__setitem__("history_length", 8))
    (work / "garbage.pt").write_bytes(os.urandom(300))
    quick_export(good, work / "export", num_calibration=256, num_eval=128)
    tampered = shutil.copytree(work / "export", work / "export_tampered")  # kernels/ too
    blob = bytearray((tampered / "policy_int8.bin").read_bytes())
    blob[40] ^= 0x01
    (tampered / "policy_int8.bin").write_bytes(bytes(blob))
    broken_manifest = shutil.copytree(work / "export", work / "export_bad_manifest")
    (broken_manifest / "manifest.json").write_text('{"format": "nanofly-export", ')
    (work / "empty_dir").mkdir()
    foreign = work / "foreign_dir"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (work / "a_file").write_text("not a directory")
    return work


# (id, argv with {w} for the work directory, words the one line must contain)
CASES = [
    # eval
    ("eval-missing-file", "eval {w}/missing.pt", "no such policy file"),
    ("eval-not-a-policy-file", "eval {w}/garbage.pt", "not a readable policy file"),
    ("eval-negative-mass", "eval {w}/negative_mass.pt", "mass: must be > 0"),
    ("eval-text-mass", "eval {w}/text_mass.pt", "mass: expected a number"),
    ("eval-preset-names-a-file", "eval {w}/file_preset.pt", "not a built-in one"),
    ("eval-no-layer-sizes", "eval {w}/no_layer_sizes.pt", "layer_sizes"),
    ("eval-text-history-length", "eval {w}/text_history.pt", "history_length is 'long'"),
    ("eval-history-does-not-fit-actor", "eval {w}/wrong_history.pt", "takes 146 inputs"),
    ("eval-export-dir-with-torch", "eval {w}/export", "use --backend c-int8"),
    ("eval-dir-of-nothing", "eval {w}/empty_dir", "neither a run directory"),
    ("eval-broken-manifest", "eval {w}/export_bad_manifest --backend c-int8", "not readable JSON"),
    ("eval-unknown-backend", "eval {w}/good.pt --backend tpu", "unknown backend 'tpu'"),
    ("eval-zero-episodes", "eval {w}/good.pt --episodes 0", "--episodes must be >= 1"),
    ("eval-success-above-one", "eval {w}/good.pt --min-success 95", "fraction from 0 to 1"),
    ("eval-negative-rmse", "eval {w}/good.pt --suite figure8 --max-rmse -0.1", "--max-rmse"),
    # export
    ("export-missing-file", "export {w}/missing.pt --out {w}/out", "no such policy file"),
    ("export-negative-mass", "export {w}/negative_mass.pt --out {w}/out", "mass: must be > 0"),
    ("export-no-layer-sizes", "export {w}/no_layer_sizes.pt --out {w}/out", "layer_sizes"),
    ("export-out-is-a-file", "export {w}/good.pt --out {w}/a_file", "not a directory"),
    ("export-out-not-an-export", "export {w}/good.pt --out {w}/foreign_dir", "not a nanofly export"),
    ("export-zero-calibration", "export {w}/good.pt --out {w}/out --calibration 0", ">= 1"),
    ("export-negative-seed", "export {w}/good.pt --out {w}/out --seed -3", "seed"),
    # flash
    ("flash-policy-not-export", f"flash {{w}}/good.pt --port {UNUSED_PORT}", "export it first"),
    ("flash-no-blob", f"flash {{w}}/empty_dir --port {UNUSED_PORT}", "no int8 model blob"),
    ("flash-blob-changed", f"flash {{w}}/export_tampered --port {UNUSED_PORT}", "does not match"),
    ("flash-broken-manifest", f"flash {{w}}/export_bad_manifest --port {UNUSED_PORT}",
     "not a nanofly export manifest"),
    ("flash-negative-chunk", f"flash {{w}}/export --port {UNUSED_PORT} --chunk-bytes -512",
     "--chunk-bytes must be"),
    ("flash-negative-retries", f"flash {{w}}/export --port {UNUSED_PORT} --retries -1",
     "--retries must be"),
    ("flash-zero-timeout", f"flash {{w}}/export --port {UNUSED_PORT} --timeout 0",
     "--timeout must be"),
    # firmware status / emulate
    ("status-negative-retries", f"firmware status --port {UNUSED_PORT} --retries -2",
     "--retries must be"),
    ("status-nan-timeout", f"firmware status --port {UNUSED_PORT} --timeout nan",
     "--timeout must be"),
    ("status-zero-baud", f"firmware status --port {UNUSED_PORT} --baud 0", "--baud must be"),
    ("emulate-negative-seconds", "firmware emulate --seconds -1", "--seconds must be"),
    ("emulate-port-out-of-range", "firmware emulate --port 70000", "--port must be"),
]


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, words", [pytest.param(a, w, id=i) for i, a, w in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(work, capsys, argv, words):
    from nanofly.cli import main

    before = tree(work)
    rc = main(argv.format(w=work).split())
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert words in lines[0], lines[0]
    assert lines[0].startswith(("error: ", "nanofly export: ")), lines[0]
    assert out == ""
    assert tree(work) == before  # nothing written, nothing changed, no temporary left


def test_sweep_size():
    assert len(CASES) >= 15


def test_eval_runs_an_export_directory_with_the_c_backends(work, capsys):
    """`nanofly eval DIR --backend c-int8` on an export directory: the manifest records the
    vehicle and MDP, the backend runs the blob (it used to ask for DIR/policy.pt)."""
    from nanofly.cli import main

    rc = main(["eval", str(work / "export"), "--backend", "c-int8", "--episodes", "8", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc in (0, 1)  # a random actor misses the threshold: exit 1, documented
    hover = result["suites"]["hover"]
    assert hover["episodes"] == 8 and result["backend"] == "c-int8"
    assert result["backend_info"]["export_dir"] == str(work / "export")
    manifest = json.loads((work / "export" / "manifest.json").read_text())
    assert manifest["vehicle"]["params"]["mass"] == PRESETS["crazyflie_paper"].mass

"""The CI recipe for users (docs/examples/nanofly-eval.yml, docs/ci.md): the workflow parses,
installs torch from the CPU index, and its gate step, run as GitHub Actions runs it (bash -e,
pipefail), passes the shipped policy and fails an untrained one. A real CI service can't run
here; the pip install and training steps are not run (the suite installs nanofly itself)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the dev extra (cflib needs it)")

from nanofly.policy.actor import init_actor, load_policy, save_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "docs" / "examples" / "nanofly-eval.yml"
SHIPPED = ROOT / "models" / "crazyflie_hover" / "policy.pt"
# Small suites, with a gate that a 50-episode sample of a policy passing the 1000-episode gate
# clears with margin on any CPU (one episode more or less must not flip the test); the
# untrained policy fails it by far.
SMALL_SUITES = {"HOVER_EPISODES": "50", "FIGURE8_EPISODES": "2", "MIN_SUCCESS": "0.8"}


def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def steps_by_id():
    steps = workflow()["jobs"]["eval"]["steps"]
    return {step["id"]: step for step in steps if "id" in step}


def test_workflow_parses_and_installs_cpu_torch_then_nanofly():
    doc = workflow()
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "push" in triggers and "pull_request" in triggers
    steps = steps_by_id()
    assert set(steps) == {"install", "train", "gate"}
    install = steps["install"]["run"]
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in install
    assert install.index("download.pytorch.org") < install.index('pip install "$NANOFLY_SOURCE"')
    assert steps["train"]["if"] == "env.POLICY == ''"
    assert "nanofly train" in steps["train"]["run"]
    for step in steps.values():  # plain shell variables only: the test runs them as written
        assert "${{" not in step["run"]


def run_gate(policy: Path, work: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """The gate step's script under bash -eo pipefail (GitHub's default shell), with the
    workflow's env, the small suites and ``nanofly``/``python`` of this interpreter."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "nanofly").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nanofly "$@"\n')
    (bin_dir / "nanofly").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    summary = work / "step_summary.md"
    env = {**os.environ, **{k: str(v) for k, v in workflow()["env"].items()}, **SMALL_SUITES,
           "POLICY": str(policy), "GITHUB_STEP_SUMMARY": str(summary),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    script = work / "gate.sh"
    script.write_text(steps_by_id()["gate"]["run"])
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)
    return result, summary


def test_gate_passes_the_shipped_policy(tmp_path):
    result, summary = run_gate(SHIPPED, tmp_path)
    assert result.returncode == 0, result.stderr
    hover = json.loads((tmp_path / "eval-hover.json").read_text())["suites"]["hover"]
    figure8 = json.loads((tmp_path / "eval-figure8.json").read_text())["suites"]["figure8"]
    assert hover["passed"] and hover["episodes"] == 50 and figure8["passed"]
    assert "- hover: passed" in summary.read_text()


def test_gate_fails_an_untrained_policy(tmp_path):
    _, payload = load_policy(SHIPPED)
    untrained = save_policy(tmp_path / "untrained.pt",
                            init_actor(payload["actor"]["layer_sizes"], seed=0),
                            observation=payload["observation"], action=payload["action"],
                            vehicle=payload["vehicle"], mdp=payload["mdp"])
    work = tmp_path / "job"
    work.mkdir()
    result, summary = run_gate(untrained, work)
    assert result.returncode == 1, result.stderr
    hover = json.loads((work / "eval-hover.json").read_text())["suites"]["hover"]
    assert not hover["passed"] and hover["success_rate"] < 0.8
    assert "- hover: FAILED" in summary.read_text()


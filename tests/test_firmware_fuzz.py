"""A short libFuzzer run (~20 s) of the firmware's frame parser and command handler, compiled
for the host with AddressSanitizer and UndefinedBehaviorSanitizer. The long run (>= 10 min)
is bench/fuzz/fuzz_bridge.py; its figures are in docs/bridge-notes.md."""
from __future__ import annotations

import subprocess

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.firmware import build_fuzzer, fuzzer_missing

from fuzzing import (arm_after_failsafe_input, fuzz_against_garbage, session_records,
                     write_seed_corpus)
from helpers import bridge as T

pytestmark = pytest.mark.skipif(bool(fuzzer_missing()), reason=str(fuzzer_missing()))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    return build_fuzzer(tmp_path_factory.mktemp("fuzz") / "build")


def test_repeated_arm_after_the_failsafe_tripped_is_not_answered_armed(fuzzer, tmp_path):
    """Upload and activate a model, ARM, 240 ms without a heartbeat (the dead man's switch
    trips), the very same ARM frame again: the reply cache used to answer it OK ("armed")
    while the board stayed disarmed, which the harness turns into an abort."""
    case = tmp_path / "arm_after_failsafe"
    blob = T.f32_blob((146, 8, 4), seed=1)
    case.write_bytes(arm_after_failsafe_input(session_records(blob, P.FORMAT_F32)))
    run = subprocess.run([str(fuzzer), str(case)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]


def test_fuzz_parser_and_command_handler_20s(fuzzer, tmp_path):
    binary = fuzzer
    export_dir = T.export(T.random_policy(tmp_path / "small.pt", layer_sizes=(146, 16, 4), seed=7),
                          tmp_path / "export", n_calibration=512)
    blobs = {P.FORMAT_INT8: (export_dir / "policy_int8.bin").read_bytes(),
             P.FORMAT_F32: (export_dir / "policy_f32.bin").read_bytes()}
    write_seed_corpus(tmp_path / "corpus", blobs)
    result, shallow = fuzz_against_garbage(binary, tmp_path / "corpus", tmp_path, seconds=20,
                                             seed=7, max_len=16384)
    assert result["crashes"] == 0 and result["hangs"] == 0, result
    assert result["exit_code"] == 0, result["log_tail"]
    assert result["executions"] > 1000
    # the session seeds (upload, verify, activate, infer, arm, heartbeat timeout) reach far
    # more of the handler than garbage alone does
    assert result["initial_coverage_edges"] > shallow["initial_coverage_edges"] + 50

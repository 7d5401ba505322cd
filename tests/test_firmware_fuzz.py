"""A short libFuzzer run (~20 s) of the firmware's frame parser and command handler, compiled
for the host with AddressSanitizer and UndefinedBehaviorSanitizer. The long run (>= 10 min)
is bench/fuzz/fuzz_bridge.py; its figures are in docs/bridge-notes.md."""
from __future__ import annotations

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge import testing as T
from nanofly.firmware_bridge.firmware import build_fuzzer, fuzzer_missing
from nanofly.firmware_bridge.fuzzing import run_fuzzer, write_seed_corpus

pytestmark = pytest.mark.skipif(bool(fuzzer_missing()), reason=str(fuzzer_missing()))


def test_fuzz_parser_and_command_handler_20s(tmp_path):
    binary = build_fuzzer(tmp_path / "build")
    export_dir = T.export(T.random_policy(tmp_path / "small.pt", layer_sizes=(146, 16, 4), seed=7),
                          tmp_path / "export", n_calibration=512)
    blobs = {P.FORMAT_INT8: (export_dir / "policy_int8.bin").read_bytes(),
             P.FORMAT_F32: (export_dir / "policy_f32.bin").read_bytes()}
    write_seed_corpus(tmp_path / "corpus", blobs)
    result = run_fuzzer(binary, tmp_path / "corpus", seconds=20, artifacts_dir=tmp_path / "artifacts",
                        seed=7, max_len=16384)
    assert result["crashes"] == 0 and result["hangs"] == 0, result
    assert result["exit_code"] == 0, result["log_tail"]
    assert result["executions"] > 1000
    # the session seeds (upload, verify, activate, infer, arm, heartbeat timeout) reach far
    # more of the handler than garbage alone does
    garbage_only = tmp_path / "garbage_corpus"
    garbage_only.mkdir()
    (garbage_only / "garbage").write_bytes((tmp_path / "corpus" / "garbage").read_bytes())
    shallow = run_fuzzer(binary, garbage_only, seconds=1, artifacts_dir=tmp_path / "artifacts2",
                         seed=7, max_len=16384)
    assert result["initial_coverage_edges"] > shallow["initial_coverage_edges"] + 50

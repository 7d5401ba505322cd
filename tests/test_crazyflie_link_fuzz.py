"""A short libFuzzer run (~20 s) of the Crazyflie app's link: the real
``crazyflie/src/nanofly_cf_link.c`` over the shared core and the NOR-flash emulator, built
against the firmware's ``app_channel.h`` (the ``crazyflie_base`` fixture; skipped with its
reason when there is no firmware tree) with AddressSanitizer and UndefinedBehaviorSanitizer.
The harness is ``crazyflie/sitl/fuzz_cf_link.c``; the long run is
``bench/fuzz/fuzz_bridge.py --harness cf-link`` and its figures are in docs/bridge-notes.md."""
from __future__ import annotations

import subprocess

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.firmware import fuzzer_missing

from fuzzing import build_cf_link_fuzzer, fuzz_against_garbage, write_cf_link_seed_corpus
from helpers import bridge as T

pytestmark = pytest.mark.skipif(bool(fuzzer_missing()), reason=str(fuzzer_missing()))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory, crazyflie_base):
    return build_cf_link_fuzzer(tmp_path_factory.mktemp("cf_link_fuzz") / "build", crazyflie_base)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cf_link_export")
    export_dir = T.export(T.random_policy(tmp / "small.pt", layer_sizes=(146, 16, 4), seed=7),
                          tmp / "export", n_calibration=512)
    return {P.FORMAT_INT8: (export_dir / "policy_int8.bin").read_bytes(),
            P.FORMAT_F32: (export_dir / "policy_f32.bin").read_bytes()}


def test_seeds_pass_the_harness_checks(fuzzer, blobs, tmp_path):
    """Every seed (uploads in 1- to 30-byte packets and over the UART, while armed, hand-overs,
    power cuts and reboots) runs through without an abort: the checks hold on real sessions."""
    write_cf_link_seed_corpus(tmp_path / "corpus", blobs)
    for seed in sorted((tmp_path / "corpus").iterdir()):
        run = subprocess.run([str(fuzzer), str(seed)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (seed.name, run.stderr[-2000:])


def test_fuzz_crazyflie_link_20s(fuzzer, blobs, tmp_path):
    write_cf_link_seed_corpus(tmp_path / "corpus", blobs)
    result, shallow = fuzz_against_garbage(fuzzer, tmp_path / "corpus", tmp_path, seconds=20,
                                             seed=7, max_len=32768)
    assert result["crashes"] == 0 and result["hangs"] == 0, result
    assert result["exit_code"] == 0, result["log_tail"]
    assert result["executions"] > 500
    # the upload sessions reach far more of the link, the core and the store than garbage does
    assert result["initial_coverage_edges"] > shallow["initial_coverage_edges"] + 100


def test_harness_catches_a_slot_erased_under_the_controller(blobs, crazyflie_base, tmp_path):
    """The link refuses flash writes until the controller took the last published model. A copy
    of nanofly_cf_link.c without that wait lets a third upload erase the slot the controller
    still runs from; the hand-over seed must then abort (the running model's CRC check)."""
    from nanofly.firmware_bridge.crazyflie_standin import LINK_C

    guard = "return published_seq != taken_seq ? NF_BUSY_OTHER : 0;"
    source = LINK_C.read_text()
    assert guard in source, "nanofly_cf_link.c changed: update this test's guard line"
    broken = tmp_path / "nanofly_cf_link.c"
    broken.write_text(source.replace(guard, "return 0;"))
    binary = build_cf_link_fuzzer(tmp_path / "build", crazyflie_base, link_c=broken)
    write_cf_link_seed_corpus(tmp_path / "corpus", blobs)
    run = subprocess.run([str(binary), str(tmp_path / "corpus" / f"handover_{P.FORMAT_F32}")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "deadly signal" in run.stderr, run.stderr[-2000:]

"""The runtime on the target: cross-compiled with export.mcu's flags (Cortex-M4F, hard float,
-O2), flash and stack limits checked with the real tools, and one run of the benchmark firmware
on QEMU whose actions must equal the host C runtime's bit for bit. Skipped where
arm-none-eabi-gcc / QEMU are not installed."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nanofly.export import mcu
from nanofly.export.mcu import mcu_figures
from nanofly.export.calibration import synthetic_observations

from helpers.exports import quick_export, write_policy

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc not installed")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                                reason="qemu-system-arm not installed")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcu")
    # weights x3: hidden units saturate, so the tanh clamp path runs on the target too
    policy = write_policy(tmp / "policy.pt", seed=2, weight_scale=3.0)
    quick_export(policy, tmp / "out", num_calibration=1024, num_eval=512)
    return tmp / "out"


@needs_arm
def test_flash_and_stack_limits(export_dir, monkeypatch):
    # a relative export directory, as `nanofly export --mcu --out out` passes it: the compiler
    # runs in a temporary folder, so the path must not be taken relative to that
    monkeypatch.chdir(export_dir.parent)
    rep = mcu.size_and_stack_report(Path(export_dir.name))
    assert rep["int8_weights_bytes"] <= 16 * 1024
    assert rep["runtime_code_bytes"] <= 4 * 1024
    assert rep["runtime_ram_bytes"] == 0  # no global or static mutable state
    assert rep["stack"]["worst"] <= 2 * 1024
    assert rep["stack"]["dynamic_or_bounded"] == []  # every frame has a static size
    assert set(rep["stack"]["external_functions_counted_as_0"]) <= {"memset", "memcmp", "memcpy"}
    assert rep["linked_firmware_flash_bytes"] > rep["f32_weights_bytes"] + rep["int8_weights_bytes"]


@needs_arm
@needs_qemu
def test_firmware_on_qemu_equals_host_runtime(export_dir, monkeypatch):
    obs = synthetic_observations(3, 146, 4)
    monkeypatch.chdir(export_dir.parent)  # relative export directory, as in the test above
    fig = mcu_figures(Path(export_dir.name), obs)  # also runs huge-value and NaN rows
    assert fig["target_equals_host_bitwise"] == {"f32": True, "int8": True}
    counts = fig["instructions_per_inference"]
    assert all(c > 0 for c in counts.values())
    # measured stack high-water mark agrees with the static bound
    assert max(fig["stack_measured_bytes"].values()) <= fig["size_and_stack"]["stack"]["worst"]
    assert fig["init_instructions"]["f32"] > 0
    print("instructions per inference:", counts)


@needs_arm
@needs_qemu
def test_odd_shapes_on_qemu_equal_host_runtime(tmp_path):
    """Widths that are not multiples of the kernels' blocks (input tail, padded outputs, an odd
    number of int8 passes) take the same assembly paths: still bit-identical to the host."""
    policy = write_policy(tmp_path / "odd.pt", sizes=(7, 9, 3), seed=3, weight_scale=2.0)
    quick_export(policy, tmp_path / "out", num_calibration=256, num_eval=128)
    fig = mcu_figures(tmp_path / "out", synthetic_observations(3, 7, 1))
    assert fig["target_equals_host_bitwise"] == {"f32": True, "int8": True}


def test_worst_stack_follows_the_call_graph(tmp_path):
    ci = tmp_path / "x.ci"
    ci.write_text(
        'graph: { title: "x"\n'
        'node: { title: "x.c:a" label: "a\\nx.c:1:1\\n16 bytes (static)" }\n'
        'node: { title: "x.c:b" label: "b\\nx.c:2:1\\n100 bytes (static)" }\n'
        'node: { title: "x.c:c" label: "c\\nx.c:3:1\\n40 bytes (static)" }\n'
        'node: { title: "nanofly_policy_act" label: "nanofly_policy_act\\nx.c:4:1\\n8 bytes (static)" }\n'
        'edge: { sourcename: "nanofly_policy_act" targetname: "x.c:a" label: "" }\n'
        'edge: { sourcename: "x.c:a" targetname: "x.c:b" label: "" }\n'
        'edge: { sourcename: "x.c:a" targetname: "x.c:c" label: "" }\n'
        'edge: { sourcename: "x.c:c" targetname: "memset" label: "" }\n}\n')
    rep = mcu.worst_stack(ci)
    assert rep["entry_points"]["nanofly_policy_act"] == 8 + 16 + 100
    assert rep["external_functions_counted_as_0"] == ["memset"]


def test_register_count():
    assert mcu._register_count("r4, r5, r6, r7, lr") == 5
    assert mcu._register_count("r0, r4-r11, lr") == 10
    assert mcu._register_count("s16-s27") == 12

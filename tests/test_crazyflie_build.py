"""`nanofly crazyflie build`: the nanofly app built into the stock Crazyflie firmware with the real
firmware tree and arm-none-eabi-gcc (one full build per session), and the refusals of bad
firmware trees and models (exit 2, one line, nothing built).

The tree comes from the crazyflie_base fixture ($CRAZYFLIE_BASE, else ../shared's release
tarball); without either the tests that need it are skipped with the reason."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanofly.firmware_bridge import crazyflie_build as cb

REPO = Path(__file__).resolve().parents[1]
NEEDS_ARM = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi)")


def run_cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "nanofly.cli", "crazyflie", "build", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env if env is not None else os.environ.copy())


def assert_refused(res, *words):
    """Exit 2 with one line on stderr naming the problem, no traceback, nothing on stdout."""
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]


# --- one real build of the default image ------------------------------------------------------

@pytest.fixture(scope="module")
def built(crazyflie_base, tmp_path_factory):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi)")
    out = tmp_path_factory.mktemp("cfapp") / "app"
    res = run_cli("--crazyflie-base", crazyflie_base, "--out", out, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    return out, summary, res.stderr


def nm(elf: Path) -> dict[str, tuple[int, int, str]]:
    """symbol -> (address, size, type) from arm-none-eabi-nm -S."""
    out = subprocess.run(["arm-none-eabi-nm", "-S", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            syms[parts[3]] = (int(parts[0], 16), int(parts[1], 16), parts[2])
    return syms


def test_default_image_is_built_with_sizes_and_progress(built):
    out, s, stderr = built
    binary = out / "build" / "cf2.bin"
    assert Path(s["cf2_bin"]) == binary and binary.is_file()
    assert binary.stat().st_size == s["cf2_bin_bytes"] > 100_000
    # the default policy is the shipped int8 hover model, exported into the app folder
    assert s["model"]["source"].endswith("models/crazyflie_hover_int8/policy.pt")
    assert s["model"]["format"] == "int8" and s["model"]["layer_sizes"][0] == 18 + 4 * s["model"]["history_length"]
    assert (out / "export" / "manifest.json").is_file()
    assert s["vehicle"]["policy_rate_hz"] == 100
    for region in ("flash", "ram", "ccm"):
        z = s["sizes"][region]
        assert z["used_bytes"] + z["free_bytes"] == z["total_bytes"] > 0
    assert s["sizes"]["flash"]["used_bytes"] > s["model"]["bytes"] > 10_000
    # make's progress was streamed, and make's own output is in the log
    assert "building cf2.bin:" in stderr and "files compiled" in stderr
    log = (out / "build.log").read_text()
    assert "Flash |" in log and "nanofly_policy_unit.o" in log
    # the app folder holds the generated files; the nanofly sources are included, not copied
    assert (out / "src" / "nanofly_model.c").is_file()
    for unit, source in cb.UNITS.items():
        assert (out / "src" / unit).read_text().strip().endswith(f'#include "{source}"')
        assert not (out / "src" / source).exists()
    assert json.loads((out / cb.SUMMARY_FILE).read_text()) == s


def test_app_symbols_params_logs_and_model_are_in_the_image(built):
    out, s, _ = built
    syms = nm(out / "build" / "cf2.elf")
    for name in ("controllerOutOfTree", "controllerOutOfTreeInit", "controllerOutOfTreeTest",
                 "appMain", "nf_cf_step", "nanofly_policy_act", "__params_nanofly", "__logs_nanofly"):
        assert name in syms, name
    # the compiled-in blob is the export's int8 blob, byte for byte
    blob = (out / "export" / "policy_int8.bin").read_bytes()
    assert syms["nanofly_app_blob_words"][1] == len(blob) == s["model"]["bytes"]
    image = (out / "build" / "cf2.bin").read_bytes()
    assert blob in image
    # the param and log names that cflib (and `nanofly crazyflie fly`) look up
    for name in (b"enable", b"rate", b"modelCrc", b"history", b"modelStatus", b"modelFormat",
                 b"inferUs", b"a0", b"a3", b"f0", b"obsNorm", b"status", b"nonfinite"):
        assert name + b"\0" in image, name


def test_model_store_link_and_deck_uart_variants(built, tmp_path):
    """The link to the host (app channel, shared core, flash store) is in the image; the erase
    runs from RAM; the store's sectors lie above the image; and the app compiles with either
    deck UART (the image's own compiler command, only NANOFLY_DECK_UART changed)."""
    out, s, _ = built
    syms = nm(out / "build" / "cf2.elf")
    for name in ("nf_cf_link_feed", "nf_core_feed", "nf_cf_flash_ops", "appchannelReceiveDataPacket"):
        assert name in syms, name
    assert 0x20000000 <= syms["erase_sector_from_ram"][0] < 0x20020000  # SRAM, not flash
    assert b"modelSource\0" in (out / "build" / "cf2.bin").read_bytes()
    store = s["model_store"]
    assert store["slots"] == ["0x080c0000", "0x080e0000"] and s["deck_uart"] == "off"
    assert int(store["image_end"], 16) + store["margin_bytes"] == 0x080C0000 and store["margin_bytes"] > 0
    cmd_line = (out / "src" / ".nanofly_app_unit.o.cmd").read_text().splitlines()[0].split(":=", 1)[1]
    assert "-DNANOFLY_DECK_UART=0" in cmd_line
    for uart, driver in ((1, "uart1SendData"), (2, "uart2SendData")):
        obj = tmp_path / f"app_uart{uart}.o"
        cmd = cmd_line.replace("-DNANOFLY_DECK_UART=0", f"-DNANOFLY_DECK_UART={uart}")
        cmd = cmd.split(" -c -o ")[0] + f" -c -o {obj} {out / 'src' / 'nanofly_app_unit.c'}"
        res = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=out)
        assert res.returncode == 0, res.stderr[-2000:]
        undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True,
                                   text=True, check=True).stdout
        assert driver in undefined


@NEEDS_ARM
def test_an_image_reaching_the_model_store_fails_the_check(tmp_path):
    src = tmp_path / "big.c"
    src.write_text("const char filler[1024] = {1};\nvoid _start(void) {}\n")
    elf = tmp_path / "big.elf"
    subprocess.run(["arm-none-eabi-gcc", "-mthumb", "-mcpu=cortex-m4", "-nostdlib",
                    "-Wl,-Ttext=0x080BFF00", "-o", str(elf), str(src)], check=True)
    with pytest.raises(cb.BuildFailed, match="inside the model store"):
        cb.check_store_sectors(elf)


def test_stack_report_of_the_controller_path(built):
    out, s, _ = built
    st = s["stack"]
    chain = [step.split()[0] for step in st["policy_path"]["chain"]]
    assert chain[0] == "nf_cf_step" and "nanofly_policy_act" in chain and "act_int8" in chain
    # the frames in the chain are GCC's -fstack-usage figures for those functions
    su = {}
    for f in (out / "src").glob("*.su"):
        for line in f.read_text().splitlines():
            where, frame, _ = line.split("\t")
            su[where.rsplit(":", 1)[-1]] = int(frame)
    for step in st["policy_path"]["chain"]:
        name, frame = step.split()
        assert su[name] == int(frame), step
    assert st["policy_path"]["bytes"] == sum(int(step.split()[1]) for step in st["policy_path"]["chain"])
    assert st["controller_path"]["bytes"] >= st["policy_path"]["bytes"] + su["controllerOutOfTree"]
    # the stabilizer task's stack is its static buffer in the image
    syms = nm(out / "build" / "cf2.elf")
    assert st["stabilizer_stack_bytes"] == syms["osSys_stabilizerTaskStackBuffer"][1] > 0
    assert st["stabilizer_task_worst_bytes"] == st["controller_path"]["bytes"] + sum(st["stabilizer_frames"].values())
    # the runtime's buffers are sized to the model, so the deepest controller call leaves room
    # for an interrupt and a context switch on the stabilizer task's stack
    assert st["free_bytes_after_context_save"] > 0


def test_rebuild_in_the_same_folder_from_the_export_prints_the_summary(built, crazyflie_base):
    out, s, _ = built
    res = run_cli("--crazyflie-base", crazyflie_base, "--policy", out / "export", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout
    for label in ("Flash", "RAM", "CCM"):
        used = s["sizes"][label.lower()]["used_bytes"]
        assert f"{label:5} {used:7d} / " in text, text
    assert "stack: policy path" in text and "stabilizer task" in text
    assert f"CRC-32 {s['model']['crc32']}" in text


# --- bad firmware trees ------------------------------------------------------------------------

def test_missing_base_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CRAZYFLIE_BASE"}
    res = run_cli("--out", tmp_path / "app", env=env)
    assert_refused(res, "no Crazyflie firmware tree", "--crazyflie-base", "CRAZYFLIE_BASE")
    res = run_cli("--crazyflie-base", tmp_path / "nowhere", "--out", tmp_path / "app")
    assert_refused(res, "no such directory")
    assert not (tmp_path / "app").exists()


def test_a_folder_that_is_not_a_firmware_tree_is_refused(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "README.md").write_text("not firmware\n")
    res = run_cli("--crazyflie-base", tmp_path / "tree", "--out", tmp_path / "app")
    assert_refused(res, "not a usable crazyflie-firmware tree", "is missing")
    assert not (tmp_path / "app").exists()


def _partial_tree(base: Path, dest: Path, files: tuple[str, ...]) -> Path:
    """A copy of a few files of the real tree (what the checks read)."""
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / rel, dest / rel)
    return dest


CHECKED_FILES = ("src/modules/interface/stabilizer_types.h",
                 "src/modules/interface/controller/controller.h",
                 "src/modules/src/power_distribution_quadrotor.c",
                 "src/platform/interface/platform_defaults_cf2.h", "Kconfig", "tools/make/oot.mk",
                 "src/config/config.h", "vendor/FreeRTOS/include/FreeRTOS.h",
                 "vendor/CMSIS/CMSIS/Core/Include/core_cm4.h", "vendor/libdw1000/inc/libdw1000.h")


def _drop(path: Path, pattern: str) -> None:
    text = path.read_text()
    assert pattern in text
    path.write_text("\n".join(ln for ln in text.splitlines() if pattern not in ln) + "\n")


def _rename(path: Path, pattern: str) -> None:
    import re
    text, n = re.subn(pattern, "renamedByTest", path.read_text())
    assert n
    path.write_text(text)


@pytest.mark.parametrize("damage, words", [
    (lambda t: (t / "tools/make/oot.mk").unlink(), ("tools/make/oot.mk",)),
    (lambda t: _drop(t / "src/modules/interface/controller/controller.h", "OutOfTree"),
     ("controller.h", "controllerOutOfTree", "out-of-tree controller API")),
    (lambda t: _rename(t / "src/modules/interface/stabilizer_types.h", r"\bcontrolModeForce\b"),
     ("stabilizer_types.h", "controlModeForce")),
    (lambda t: _drop(t / "src/modules/src/power_distribution_quadrotor.c", "normalizedForces"),
     ("power_distribution_quadrotor.c", "controlModeForce", "2025.12")),
    (lambda t: shutil.rmtree(t / "vendor/FreeRTOS"), ("vendor/FreeRTOS", "git submodule update")),
    (lambda t: None, ("not the top of a git checkout",)),  # the copy is no git checkout
], ids=["no-oot-mk", "no-oot-controller-api", "no-force-mode-type", "force-mode-not-implemented",
        "empty-submodule", "not-a-git-checkout"])
def test_a_tree_missing_what_the_app_needs_is_refused(crazyflie_base, tmp_path, damage, words):
    tree = _partial_tree(crazyflie_base, tmp_path / "tree", CHECKED_FILES)
    damage(tree)
    res = run_cli("--crazyflie-base", tree, "--out", tmp_path / "app")
    assert_refused(res, str(tree.resolve()), *words)
    assert not (tmp_path / "app").exists()


def test_missing_arm_toolchain_is_refused(crazyflie_base, tmp_path):
    # a PATH with git and make but no arm-none-eabi-gcc
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "make"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = dict(os.environ, PATH=str(bin_dir))
    res = run_cli("--crazyflie-base", crazyflie_base, "--out", tmp_path / "app", env=env)
    assert_refused(res, "arm-none-eabi-gcc not found")


# --- bad models ----------------------------------------------------------------------------------

def _policy(tmp_path: Path, layer_sizes: list[int]) -> Path:
    from nanofly.policy.actor import init_actor, load_policy, save_policy

    _, shipped = load_policy(cb.DEFAULT_POLICY)
    return save_policy(tmp_path / f"p{'-'.join(map(str, layer_sizes))}.pt", init_actor(layer_sizes, 0),
                       observation={"dim": layer_sizes[0]}, action=shipped["action"],
                       vehicle=shipped["vehicle"], mdp=shipped["mdp"])


@pytest.mark.parametrize("sizes", [[20, 16, 4], [146, 16, 3], [18 + 4 * 33, 16, 4]],
                         ids=["inputs-not-18+4H", "three-outputs", "history-beyond-32"])
def test_a_policy_with_another_layout_is_refused(crazyflie_base, tmp_path, sizes):
    res = run_cli("--crazyflie-base", crazyflie_base, "--policy", _policy(tmp_path, sizes),
                  "--out", tmp_path / "app")
    assert_refused(res, f"model layout {sizes[0]} inputs -> {sizes[-1]} outputs", "18 + 4 * H")
    assert not (tmp_path / "app").exists()


def test_an_export_with_another_layout_is_refused(crazyflie_base, tmp_path):
    from nanofly.export.exporter import export_policy

    obs = np.random.default_rng(0).normal(size=(256, 21)).astype(np.float32)
    export_policy(_policy(tmp_path, [21, 8, 4]), tmp_path / "export", calibration_obs=(obs, "synthetic"),
                  eval_obs=(obs, "synthetic"))
    res = run_cli("--crazyflie-base", crazyflie_base, "--policy", tmp_path / "export",
                  "--out", tmp_path / "app")
    assert_refused(res, "model layout 21 inputs -> 4 outputs")


def test_an_export_without_vehicle_and_mdp_or_with_a_corrupt_blob_is_refused(built, crazyflie_base,
                                                                             tmp_path):
    out, _, _ = built
    old = tmp_path / "old_export"
    shutil.copytree(out / "export", old)
    manifest = json.loads((old / "manifest.json").read_text())
    for key in ("vehicle", "mdp"):
        manifest.pop(key)
    (old / "manifest.json").write_text(json.dumps(manifest))
    res = run_cli("--crazyflie-base", crazyflie_base, "--policy", old, "--out", tmp_path / "app")
    assert_refused(res, "vehicle parameters and MDP", "nanofly export")

    bad = tmp_path / "corrupt_export"
    shutil.copytree(out / "export", bad)
    blob = bytearray((bad / "policy_int8.bin").read_bytes())
    blob[100] ^= 0x40
    (bad / "policy_int8.bin").write_bytes(bytes(blob))
    res = run_cli("--crazyflie-base", crazyflie_base, "--policy", bad, "--out", tmp_path / "app")
    assert_refused(res, "SHA-256")
    # the manifest updated to the corrupt bytes: the runtime's own checks refuse it (CRC-32)
    import hashlib
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["blobs"]["int8"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(manifest))
    res = run_cli("--crazyflie-base", crazyflie_base, "--policy", bad, "--out", tmp_path / "app")
    assert_refused(res, "loader checks", "CRC")
    assert not (tmp_path / "app").exists()


def test_out_that_is_another_folder_is_refused(crazyflie_base, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep\n")
    res = run_cli("--crazyflie-base", crazyflie_base, "--out", tmp_path / "mine")
    assert_refused(res, "not a nanofly Crazyflie app folder")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


# --- pure helpers --------------------------------------------------------------------------------

def test_runtime_limits_are_multiples_of_8_covering_the_model():
    assert cb.runtime_limits([146, 64, 64, 4]) == (152, 64)
    assert cb.runtime_limits([22, 64, 4]) == (64, 64)  # the width never exceeds the input limit
    assert cb.runtime_limits([18, 100, 4]) == (104, 104)


def test_call_graph_path_sums_the_deepest_chain(tmp_path):
    ci = tmp_path / "a.ci"
    ci.write_text(
        'graph: { title: "a.c"\n'
        'node: { title: "top" label: "top\\na.c:1:1\\n16 bytes (static)" }\n'
        'node: { title: "a.c:leaf" label: "leaf\\na.c:2:1\\n100 bytes (static)" }\n'
        'node: { title: "mid" label: "mid\\na.c:3:1\\n8 bytes (static)" }\n'
        'edge: { sourcename: "top" targetname: "a.c:leaf" label: "a.c:1:5" }\n'
        'edge: { sourcename: "top" targetname: "mid" label: "a.c:1:6" }\n'
        'edge: { sourcename: "mid" targetname: "memcpy" label: "a.c:3:4" }\n'
        '}\n')
    fns = cb.read_call_graphs([tmp_path])
    path = cb.deepest_path(fns, "top")
    assert path["bytes"] == 116 and path["chain"] == ["top 16", "leaf 100"]
    assert path["unknown_callees"] == ["memcpy"]
    assert cb.deepest_path(fns, "absent")["bytes"] is None

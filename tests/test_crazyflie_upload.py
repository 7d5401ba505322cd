"""Model uploads to a Crazyflie without reflashing, through cflib's real client code, against the
host stand-in (`nanofly crazyflie sitl`: the app's link and model store C on an emulated
STM32F405 NOR flash in a file, behind the CRTP peer on UDP).

Models: the shipped policy's int8 export (A) and its float32 blob (B): two valid models of the
interface the app runs (146 -> 4) with different CRCs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.client import BridgeClient, LinkError, read_export_blob, upload_model
from nanofly.firmware_bridge.crtp_link import APP_CHANNEL_MTU
from nanofly.firmware_bridge.crazyflie_standin import CrazyflieStandIn

from helpers import bridge as T

pytest.importorskip("cflib")

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "crazyflie_hover_int8" / "policy.pt"
# cflib's own system tests expect more than 450 packets/s over the Crazyradio; the estimate
# counts every app-channel packet in both directions at that rate.
RADIO_PACKETS_PER_S = 450.0


class Model:
    def __init__(self, export_dir: Path, fmt: str):
        self.dir, self.fmt = export_dir, fmt
        self.blob, self.id = read_export_blob(export_dir, fmt)
        self.crc = P.model_crc(self.blob)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = T.export(SHIPPED, tmp_path_factory.mktemp("cf_upload") / "export", seed=0)
    return {"A": Model(out, "int8"), "B": Model(out, "f32")}


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "nanofly.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


class SitlProcess:
    """`nanofly crazyflie sitl --flash-image FILE` as a process; .uri from its first line."""

    def __init__(self, image: Path, *extra):
        self.proc = subprocess.Popen([sys.executable, "-m", "nanofly.cli", "crazyflie", "sitl",
                                      "--flash-image", str(image), *map(str, extra)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline().strip()
        assert line.startswith("udp://127.0.0.1:"), (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.uri = line
        self.banner = self.proc.stderr.readline()

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


def status(uri: str) -> dict:
    res = cli("firmware", "status", "--uri", uri, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["status"]


def test_flash_over_cflib_then_restart_keeps_the_model(models, tmp_path):
    a = models["A"]
    image = tmp_path / "flash.bin"
    sitl = SitlProcess(image)
    try:
        assert "compiled-in" in sitl.banner  # a fresh flash: no slot holds a model
        res = cli("flash", a.dir, "--uri", sitl.uri, "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["activated"] and out["active_crc_hex"] == f"0x{a.crc:08x}"
        s = status(sitl.uri)
        assert s["active_crc"] == a.crc and s["active_size"] == len(a.blob)
    finally:
        assert sitl.stop() == 0
    assert image.stat().st_size == 1024 * 1024  # the STM32F405's flash
    sitl = SitlProcess(image)  # power cycle: the same flash image
    try:
        assert "flash slot" in sitl.banner and f"0x{a.crc:08x}" in sitl.banner, sitl.banner
        assert status(sitl.uri)["active_crc"] == a.crc
    finally:
        sitl.stop()


def test_compiled_in_model_runs_until_a_slot_holds_one(models, tmp_path):
    a, b = models["A"], models["B"]
    sitl = SitlProcess(tmp_path / "flash.bin", "--default", a.dir)
    try:
        assert "compiled-in" in sitl.banner and f"0x{a.crc:08x}" in sitl.banner, sitl.banner
        res = cli("flash", b.dir, "--format", "f32", "--uri", sitl.uri)
        assert res.returncode == 0, res.stderr
        assert status(sitl.uri)["active_crc"] == b.crc
    finally:
        sitl.stop()


@pytest.mark.parametrize("args, words", [
    (("--flash-image", "{tmp}/small.bin"), "not a flash image of 1048576 bytes"),
    (("--flash-image", "{tmp}"), "is a directory"),
    (("--flash-image", "{tmp}/missing/flash.bin"), "No such file or directory"),
    (("--default", "{tmp}/no-export"), "no int8 model blob"),
    (("--port", "70000"), "UDP port"),
])
def test_sitl_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    (tmp_path / "small.bin").write_bytes(b"\xff" * 100)
    res = cli("crazyflie", "sitl", *(a.format(tmp=tmp_path) for a in args))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], res.stderr
    assert (tmp_path / "small.bin").stat().st_size == 100  # a wrong image is left as it was


def test_flash_refuses_port_and_uri_mixed_up(models):
    res = cli("flash", models["A"].dir, "--port", "udp://127.0.0.1:1")
    assert res.returncode == 2 and "--uri" in res.stderr and "Traceback" not in res.stderr
    res = cli("firmware", "status", "--uri", "socket://127.0.0.1:1")
    assert res.returncode == 2 and "not a cflib URI" in res.stderr


def _kill_during(image: Path, model: Model, when) -> None:
    """Upload ``model`` to a stand-in process and kill -9 it when ``when(progress or stage)``."""
    sitl = SitlProcess(image)
    killed = False

    def kill(stage) -> None:
        nonlocal killed
        if not killed and when(stage):
            os.kill(sitl.proc.pid, signal.SIGKILL)
            killed = True

    try:
        with BridgeClient(sitl.uri, timeout_s=0.2, retries=1) as c:
            try:
                upload_model(c, model.blob, model.fmt, model_id=model.id, chunk_bytes=1024,
                             max_reconnects=0, activate=False, progress=kill)
                kill("committed")
                c.activate(model.crc)
                kill("activated")
            except (LinkError, P.ProtocolError):
                pass
        assert killed
    finally:
        sitl.proc.wait(timeout=10)
        sitl.proc.stdout.close()
        sitl.proc.stderr.close()


@pytest.mark.parametrize("stage", ["mid-upload", "committed", "activated"])
def test_kill_9_leaves_the_old_or_the_new_model(models, tmp_path, stage):
    a, b = models["A"], models["B"]
    image = tmp_path / "flash.bin"
    sitl = SitlProcess(image)
    try:
        assert cli("flash", a.dir, "--uri", sitl.uri).returncode == 0
    finally:
        sitl.stop()
    if stage == "mid-upload":
        _kill_during(image, b, lambda p: not isinstance(p, str) and p.sent_bytes > len(b.blob) // 2)
    else:
        _kill_during(image, b, lambda s: s == stage)
    sitl = SitlProcess(image)
    try:
        active = status(sitl.uri)["active_crc"]
    finally:
        sitl.stop()
    # before ACTIVATE's mark is in flash the old model runs; after it, the new one
    assert active == (b.crc if stage == "activated" else a.crc)


def test_upload_while_armed_is_refused_and_the_model_stays(models, tmp_path):
    a, b = models["A"], models["B"]
    with CrazyflieStandIn(tmp_path / "flash.bin") as standin:
        with BridgeClient(standin.uri) as c:
            upload_model(c, a.blob, a.fmt, model_id=a.id)
            cf = c._serial.crazyflie
            cf.supervisor.send_arming_request(True)  # cflib's supervisor port, as cfclient arms
            deadline = time.monotonic() + 2
            while not standin.peer.state.armed and time.monotonic() < deadline:
                time.sleep(0.01)
            assert standin.peer.state.armed
            with pytest.raises(P.DeviceError) as err:
                upload_model(c, b.blob, b.fmt, model_id=b.id)
            assert err.value.code == P.ERR_BUSY and "armed" in str(err.value), str(err.value)
            s = c.status()
            assert s.active_crc == a.crc and s.armed
            assert standin.model().crc == a.crc and standin.peer.param_values["nanofly.modelCrc"] == a.crc
            cf.supervisor.send_arming_request(False)
            deadline = time.monotonic() + 2
            while standin.peer.state.armed and time.monotonic() < deadline:
                time.sleep(0.01)
            upload_model(c, b.blob, b.fmt, model_id=b.id)  # disarmed: accepted
            assert c.status().active_crc == b.crc
        m = standin.model()
        assert m.crc == b.crc and m.source == "flash slot" and m.load_status == 0
        assert standin.peer.param_values["nanofly.modelSource"] == 1


def test_radio_wire_bytes_and_upload_time(models, tmp_path):
    """CRTP bytes (payload + the header byte of each app-channel packet, both directions) per
    model byte for a whole `nanofly flash` (HELLO, BEGIN, CHUNKs, COMMIT, ACTIVATE, STATUS), and
    the time that many packets take at the radio's packet rate."""
    a = models["A"]
    with CrazyflieStandIn(tmp_path / "flash.bin") as standin, BridgeClient(standin.uri) as c:
        t0 = time.monotonic()
        result = upload_model(c, a.blob, a.fmt, model_id=a.id)
        wall = time.monotonic() - t0
        packets = dict(standin.peer.app_packets)
        crtp_bytes = standin.peer.app_bytes["in"] + standin.peer.app_bytes["out"]
    ratio = crtp_bytes / len(a.blob)
    radio_s = (packets["in"] + packets["out"]) / RADIO_PACKETS_PER_S
    print(json.dumps({"model_bytes": len(a.blob), "crtp_bytes": crtp_bytes, "packets": packets,
                      "wire_per_model_byte": round(ratio, 4), "udp_wall_s": round(wall, 3),
                      "radio_estimate_s": round(radio_s, 2),
                      "radio_assumption": f"{RADIO_PACKETS_PER_S:.0f} packets/s, each packet of "
                                          f"either direction one radio packet"}))
    assert result.activated and ratio <= 1.10
    assert packets["in"] >= len(a.blob) / APP_CHANNEL_MTU

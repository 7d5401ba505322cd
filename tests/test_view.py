"""``nanofly view``: the replay page, written by the CLI from the shipped run directory, loaded in a
real headless Chromium (Debian's ``chromium``; skipped only when it is absent): no console
errors, a canvas that shows the scene (the trail's and the target's colours are on screen), and an
animation that advances. Bad input: one-line errors, exit status 2.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), which needs no extra package.
``NANOFLY_VIEW_SCREENSHOTS=DIR`` keeps the screenshots in DIR (docs/img holds the ones the docs
show); by default they go to the test's temporary folder.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from nanofly.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = REPO / "models" / "crazyflie_hover"
CHROMIUM = os.environ.get("NANOFLY_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
# replay.js: the trail's and the target's colours (unlit, so drawn as they are; no rotor has them)
TRAIL_RGB = (0x1F, 0x6F, 0xEB)
TARGET_RGB = (0xFF, 0x00, 0xFF)


# -- bad input ----------------------------------------------------------------------------------
def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_path_is_one_line_error(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nothing_here")]) == 2
    assert "does not exist" in _error_line(capsys)


def test_directory_without_policy_is_one_line_error(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    assert "has no policy.pt" in _error_line(capsys)


def test_unreadable_policy_is_one_line_error(tmp_path, capsys):
    garbage = tmp_path / "policy.pt"
    garbage.write_bytes(b"not a policy file at all")
    assert main(["view", str(garbage)]) == 2
    line = _error_line(capsys)
    assert str(garbage) in line
    assert not (tmp_path / "policy_replay.html").exists()


def test_bad_episode_count_is_one_line_error(capsys):
    assert main(["view", str(RUN_DIR), "--episodes", "0"]) == 2
    assert "--episodes" in _error_line(capsys)


# -- the page -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replay_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("view") / "replay.html"
    progress = io.StringIO()
    here = os.getcwd()
    os.chdir(REPO)  # a relative path, as a user types it, is the page's title
    try:
        with contextlib.redirect_stderr(progress), contextlib.redirect_stdout(io.StringIO()):
            status = main(["view", "models/crazyflie_hover", "--out", str(out), "--episodes", "3"])
    finally:
        os.chdir(here)
    assert status == 0, progress.getvalue()
    assert "hover: 3 x 500 steps" in progress.getvalue()  # progress while the rollouts run
    return out


def _page_data(page: Path) -> dict:
    text = page.read_text()
    start = text.index('id="nanofly-replay-data">') + len('id="nanofly-replay-data">')
    return json.loads(text[start:text.index("</script>", start)])


def test_page_is_self_contained_with_the_recorded_rollouts(replay_page):
    text = replay_page.read_text()
    # nothing loaded from elsewhere (the browser test also checks every request it makes)
    assert "<link" not in text and "<script src" not in text
    data = _page_data(replay_page)
    names = [ep["name"] for ep in data["episodes"]]
    assert names == ["hover 1", "hover 2", "hover 3", "figure-eight"]
    for ep in data["episodes"]:
        n = ep["steps"]
        assert len(ep["position_m"]) == 3 * n and len(ep["target_m"]) == 3 * n
        assert len(ep["quaternion_wxyz"]) == 4 * n and len(ep["rotor_command_normalized"]) == 4 * n
        q = np.reshape(ep["quaternion_wxyz"], (n, 4))
        assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-3)
        assert np.abs(ep["rotor_command_normalized"]).max() <= 1.0
    eight = data["episodes"][-1]
    assert eight["reference_m"] and eight["steps"] == 1650  # 3 laps of 5.5 s at 100 Hz
    # the figure-eight episode follows its reference: the target moves along it
    targets = np.reshape(eight["target_m"], (-1, 3))
    assert np.ptp(targets[:, 0]) > 0.9 and np.ptp(targets[:, 1]) > 0.45
    assert data["learning_curve"]["env_steps"], data["learning_curve_note"]


def test_policy_file_alone_says_there_is_no_curve():
    from nanofly.view import learning_curve

    curve, note = learning_curve(None)
    assert curve is None and "policy file alone" in note
    curve, note = learning_curve(RUN_DIR)
    assert len(curve["env_steps"]) == len(curve["mean_return"]) > 10


def test_recorded_rollouts_are_the_suites_own_and_end_at_termination():
    from nanofly.evaluate import open_for_eval
    from nanofly.train.evaluate import hover_suite
    from nanofly.view import RecordingPolicy

    policy, vehicle, mdp = open_for_eval(RUN_DIR, "torch")
    recorder = RecordingPolicy(policy, 2)
    result = hover_suite(recorder, preset=vehicle, mdp=mdp, episodes=2, record=2)
    suite_positions = result["_trajectories"]["positions"]  # (T + 1, 2, 3), target at 0
    for k, ep in enumerate(recorder.episodes()):
        assert ep["terminated_at_step"] is None and ep["length"] == mdp.episode_steps
        np.testing.assert_array_equal(ep["position_m"], suite_positions[:-1, k])

    # rotors at their slowest: every vehicle falls out of the box, and its recording ends there
    def slowest(obs):
        return np.full((obs.shape[0], 4), -1.0, np.float32)

    recorder = RecordingPolicy(slowest, 3)
    result = hover_suite(recorder, preset=vehicle, mdp=mdp, episodes=3)
    assert result["termination_rate"] == 1.0
    for ep in recorder.episodes():
        end = ep["terminated_at_step"]
        assert end is not None and 0 < end == ep["length"] < mdp.episode_steps
        # inside the box until the step that left it
        assert np.abs(ep["position_m"] - ep["target_m"]).max() < mdp.termination_position
        assert ep["rotor_command_normalized"].min() == -1.0


class DevTools:
    """A headless Chromium driven over the DevTools protocol on a pipe."""

    def __init__(self, chromium: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_pipes():  # the protocol's file descriptors are 3 (commands) and 4 (replies)
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)  # neither can be 3 or 4 now
            os.dup2(a, 3)  # inheritable, unlike the pipes' own descriptors (closed on exec)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
             "--no-default-browser-check", "--mute-audio",
             # WebGL without a GPU: SwiftShader, which Chromium no longer picks by itself
             "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "about:blank"],
            close_fds=False, preexec_fn=child_pipes,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session = None

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], 0.5)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, timeout_s: float = 30.0, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "")[:500])
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _canvas_pixels(devtools: DevTools) -> np.ndarray:
    """The 3D canvas's own pixels (H, W, 3): what WebGL drew, without the page around it."""
    from PIL import Image

    url = devtools.evaluate("document.querySelector('#stage canvas').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _count_near(pixels: np.ndarray, rgb, tolerance: int) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=2) <= tolerance).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); "
                                               "CI installs it")
def test_replay_runs_in_headless_chromium(replay_page, tmp_path):
    shots = Path(os.environ.get("NANOFLY_VIEW_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    devtools = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        targets = devtools.send("Target.getTargets")["targetInfos"]
        pages = [t for t in targets if t["type"] == "page"]
        devtools.session = devtools.send("Target.attachToTarget", targetId=pages[0]["targetId"],
                                         flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            devtools.send(f"{domain}.enable")
        devtools.send("Emulation.setDeviceMetricsOverride", width=1400, height=860,
                      deviceScaleFactor=1, mobile=False)
        devtools.send("Page.navigate", url=replay_page.as_uri())
        deadline = time.monotonic() + 30
        while not devtools.evaluate("window.nanoflyFrames > 0"):
            assert not devtools.errors(), devtools.errors()
            assert time.monotonic() < deadline, "the replay never drew a frame"
            time.sleep(0.2)
        frames_before = devtools.evaluate("window.nanoflyFrames")
        counter_before = devtools.evaluate("document.getElementById('frame-counter').textContent")
        time.sleep(1.0)
        frames_after = devtools.evaluate("window.nanoflyFrames")
        assert frames_after > frames_before
        counter_after = devtools.evaluate("document.getElementById('frame-counter').textContent")
        assert counter_after != counter_before
        assert devtools.evaluate("nanoflyView.episodes.length") == 4

        # the hover episode that starts farthest from its target (the longest trail to show)
        data = _page_data(replay_page)
        hover = [ep for ep in data["episodes"] if ep["kind"] == "hover"]
        farthest = max(range(len(hover)), key=lambda k: np.linalg.norm(
            np.subtract(hover[k]["position_m"][:3], hover[k]["target_m"][:3])))
        step = min(55, hover[farthest]["steps"] - 1)  # still correcting: tilted, rotors apart
        next_frames = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        for name, episode, step in (("view_hover.png", farthest, step),
                                    ("view_figure_eight.png", len(hover), 900)):
            devtools.evaluate(f"nanoflyView.pause(); nanoflyView.select({episode}); "
                              f"nanoflyView.seek({step})")
            devtools.evaluate(next_frames)
            screenshot = devtools.send("Page.captureScreenshot", format="png")["data"]
            (shots / name).write_bytes(base64.b64decode(screenshot))
            pixels = _canvas_pixels(devtools)
            assert pixels.size and pixels.std() > 10, f"{name}: the canvas is blank"
            # the trail (drawn up to the current step) and the target are on screen
            assert _count_near(pixels, TRAIL_RGB, 40) > 150, f"{name}: no trail on screen"
            assert _count_near(pixels, TARGET_RGB, 40) > 100, f"{name}: no target on screen"
            overlay = devtools.evaluate("document.getElementById('overlay').textContent")
            assert f"step {step}" in overlay, overlay
        assert "figure-eight reference" in devtools.evaluate(
            "document.getElementById('legend').textContent")
        assert not devtools.errors(), devtools.errors()
        # no network at view time: the page, and the blob: URLs it makes for three.js
        requested = {e["params"]["request"]["url"].split(":", 1)[0] for e in devtools.events
                     if e.get("method") == "Network.requestWillBeSent"}
        assert requested <= {"file", "blob", "data"}, requested
    finally:
        devtools.close()

"""The MLflow UI as a person sees it: `trainyard ui` in headless Chromium shows two runs and
their metric charts. Saves a screenshot to tests/output/mlflow_ui.png.

Chromium comes from Debian's `chromium` package; the test installs it with apt-get when it is
missing (as root, or through `sudo -n`) and skips, saying why, only when that fails.
"""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, free_port
from trainyard import tracking

pytestmark = pytest.mark.slow

SCREENSHOT = REPO / "tests" / "output" / "mlflow_ui.png"
RUNS = {"cnn-lr-high": 0.1, "cnn-lr-low": 0.01}  # run name -> learning rate
METRIC = "val/accuracy"
# No sandbox (containers, root), no GPU, and nothing that reaches the internet.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--hide-scrollbars", "--window-size=1920,1080"]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def _chromium() -> str:
    """Chromium's path; installs Debian's package if it is missing, else skips saying why."""
    if found := _find_chromium():
        return found
    if not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and this machine has no apt-get to install it")
    if os.geteuid() == 0:
        prefix = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"]  # never prompt for a password
    else:
        pytest.skip("Chromium is not installed; installing it needs root or sudo, and neither "
                    "is available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        command = [*prefix, *step]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"Chromium is not installed and `{' '.join(command)}` failed: {err}")
        if proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
            pytest.skip(f"Chromium is not installed and `{' '.join(command)}` failed "
                        f"(exit {proc.returncode}): {said[0]}")
    found = _find_chromium()
    if found is None:
        pytest.skip("apt-get installed the chromium package but no chromium binary is on PATH")
    return found


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    JSON messages ending in NUL on fds 3 and 4), so the test can wait for what a person waits
    for, with nothing but the standard library."""

    def __init__(self, chromium: str, profile: Path):
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome = os.pipe()
        # Chromium's ends above 10 first, so that wiring them to 3 and 4 clobbers neither.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome, from_chrome)]
        for fd in (to_chrome, from_chrome):
            os.close(fd)

        def wire_fds() -> None:  # in the child; dup2 leaves 3 and 4 open across exec
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-pipe", "about:blank"],
                                     preexec_fn=wire_fds, close_fds=False,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        for fd in ends:
            os.close(fd)
        self._buffer, self._next_id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, timeout: float = 60,
             **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()}) during {method}")
            self._buffer += chunk

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def evaluate(self, expression: str):
        return self.page("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _make_runs(uri: str) -> str:
    """Two finished runs with a metric over 8 steps; returns their experiment's id."""
    for name, lr in RUNS.items():
        ref = tracking.open_run(uri, "ui-check", name, {"trainyard.kind": "supervised"},
                                {"train.lr": lr}, f"name: {name}\n")
        logger = tracking.RunLogger(ref)
        for epoch in range(1, 9):
            logger.log({METRIC: 1 - 0.5 * math.exp(-30 * lr * epoch),
                        "train/loss": math.exp(-20 * lr * epoch)}, step=50 * epoch)
        tracking.close_run(ref, "FINISHED")
    return MlflowClient(uri).get_experiment_by_name("ui-check").experiment_id


def _start_ui(uri: str, port: int) -> subprocess.Popen:
    script = Path(sys.executable).with_name("trainyard")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "trainyard.cli"]
    proc = subprocess.Popen([*command, "ui", "--tracking-uri", uri, "--port", str(port)],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"trainyard ui did not answer on port {port} within 120 s")
            time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    """End the UI and every process it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)  # its job-runner children outlive SIGTERM
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# What a person sees on the runs page's chart view, as the page itself reports it.
LOOK = """JSON.stringify({
  text: document.body ? document.body.innerText : "",
  chartTitles: [...document.querySelectorAll(
      '[data-testid="experiment-view-compare-runs-chart-area"] [title]')]
      .map(e => e.getAttribute("title")),
  lines: document.querySelectorAll(".js-plotly-plot g.trace.scatter path.js-line").length,
})"""


def _missing(seen: dict) -> list[str]:
    """What a person should see on the chart view but cannot (empty when all is there)."""
    missing = [f"run {name} in the runs list" for name in RUNS if name not in seen["text"]]
    if METRIC not in seen["chartTitles"]:
        missing.append(f"a chart titled {METRIC} (charts: {seen['chartTitles']})")
    missing += [f"{name}'s line in the {METRIC} chart's legend" for name in RUNS
                if f"{name} ({METRIC})" not in seen["text"]]
    if seen["lines"] < 2 * len(RUNS):  # two charts (train/loss, val/accuracy), a line per run
        missing.append(f"a plotted line per run and chart (found {seen['lines']})")
    return missing


def test_ui_shows_both_runs_and_their_metric_charts(workdir, store_uri):
    chromium = _chromium()
    experiment_id = _make_runs(store_uri)
    port = free_port()
    ui = _start_ui(store_uri, port)
    # The runs page in its chart view (an experiment's plain URL opens an overview in 3.17).
    url = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"
    browser = None
    try:
        browser = Browser(chromium, workdir / "chromium-profile")
        browser.page("Emulation.setDeviceMetricsOverride", width=1920, height=1080,
                     deviceScaleFactor=1, mobile=False)
        browser.page("Page.navigate", url=url)
        deadline = time.monotonic() + 120
        while True:
            seen = json.loads(browser.evaluate(LOOK) or '{"text": "", "chartTitles": [], '
                              '"lines": 0}')
            missing = _missing(seen)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, f"the UI at {url} does not show: {'; '.join(missing)}"
        time.sleep(1)  # let the charts finish drawing
        png = base64.b64decode(browser.page("Page.captureScreenshot", format="png")["data"])
    finally:
        if browser is not None:
            browser.close()
        _stop(ui)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1920, 1080)

"""Starting and stopping `spillway serve` for the tests that talk to it over HTTP."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

REQUIRE_WEB = os.environ.get("SPILLWAY_REQUIRE_WEB") == "1"


def need_program(name: str, why: str) -> str:
    """The path of a program, or a skip (a failure under SPILLWAY_REQUIRE_WEB=1)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        msg = f"{name} not found ({why}; Debian: apt-get install {name})"
        if REQUIRE_WEB:
            pytest.fail(msg + " (SPILLWAY_REQUIRE_WEB=1)")
        pytest.skip(msg)
    return path


class Server:
    """`spillway serve` on a free loopback port, stopped (SIGTERM, then waited for) on exit."""

    def __init__(self, cli: pathlib.Path, model: pathlib.Path, *args: str, log: pathlib.Path):
        self.cmd = [str(cli), "serve", "--model", str(model), "--port", "0", *args]
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "Server":
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, stdout=self.log, text=True)
        deadline = time.time() + 60
        assert self.proc.stderr is not None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"spillway serve exited: {self.proc.wait()}")
            self.log.write(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError("spillway serve did not start in 60 s")
        # The rest of stderr goes to the log (a pipe nobody reads would fill and block).
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stderr, stdout=self.log)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._drain.wait(10)
        self.log.close()


def request(url: str, body: dict | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 120) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return e.code, dict(e.headers), payload


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver)."""
    chromium = need_program("chromium", "the browser tests drive headless Chromium")
    driver_path = need_program("chromedriver", "Selenium talks to Chromium through it")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        msg = "selenium not installed (pip install selenium)"
        if REQUIRE_WEB:
            pytest.fail(msg + " (SPILLWAY_REQUIRE_WEB=1)")
        pytest.skip(msg)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never downloads a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def wait_for(driver, cond, timeout=120, what=""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d), what)

"""The real components the tests check against: node_exporter and promtool from Debian's packages.

A test that needs one skips where it is missing; under CI (CI=true), where .ci/run installs them all, a
missing tool fails the test instead, so a green CI never hides a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

NODE_EXPORTER_NAMES = ("prometheus-node-exporter", "node_exporter")


def require_tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{' or '.join(names)} not installed (Debian: see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must have it")
    pytest.skip(message)


def promtool_check(text: bytes) -> subprocess.CompletedProcess:
    promtool = require_tool("promtool")
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeExporter:
    """node_exporter with only the textfile collector, on 127.0.0.1, reading `directory`."""

    def __init__(self, directory: Path):
        self.binary = require_tool(*NODE_EXPORTER_NAMES)
        self.directory = directory
        self.process: Optional[subprocess.Popen] = None
        self.url = ""

    def __enter__(self) -> "NodeExporter":
        for _ in range(3):  # the free port can be taken between choosing and binding it
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}/metrics"
            self.process = subprocess.Popen(
                [self.binary, "--collector.disable-defaults", "--collector.textfile",
                 f"--collector.textfile.directory={self.directory}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    self.scrape()
                    return self
                except OSError:
                    time.sleep(0.05)
            self._stop()
        raise RuntimeError(f"node_exporter did not start: {self.process.stderr.read().decode()[-2000:]}")

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            return response.read().decode()

    def _stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stderr:
            self.process.stderr.close()

    def __exit__(self, *exc) -> None:
        self._stop()

"""The real components the tests check against: node_exporter, promtool and the Prometheus server from
Debian's packages.

A test that needs one skips where it is missing; under CI (CI=true), where .ci/run installs them all, a
missing tool fails the test instead, so a green CI never hides a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
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


def stop(process: Optional[subprocess.Popen], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds, for a server a test started."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
        self.url = self.address = ""

    def __enter__(self) -> "NodeExporter":
        for _ in range(3):  # the free port can be taken between choosing and binding it
            port = _free_port()
            self.address = f"127.0.0.1:{port}"  # a scrape target
            self.url = f"http://{self.address}/metrics"
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
        stop(self.process, timeout=5)
        if self.process and self.process.stderr:
            self.process.stderr.close()

    def __exit__(self, *exc) -> None:
        self._stop()


class Prometheus:
    """Debian's Prometheus server on 127.0.0.1, with its data in `directory` (a temp dir): it scrapes
    `targets` ({job: ["host:port", ...]}) and evaluates `rule_files` every `interval`. Its first scrape
    comes a few seconds after it starts; `wait_for` polls a query until its answer satisfies a check."""

    def __init__(self, directory: Path, targets: dict, rule_files=(), interval: str = "1s"):
        self.binary = require_tool("prometheus")
        self.directory = directory
        self.config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                               for job, hosts in targets.items()],
        }
        self.process: Optional[subprocess.Popen] = None
        self.url = ""

    def __enter__(self) -> "Prometheus":
        import json

        config = self.directory / "prometheus.yml"
        config.write_text(json.dumps(self.config))  # JSON is YAML
        log = self.directory / "prometheus.log"
        for _ in range(3):  # the free port can be taken between choosing and binding it
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            with log.open("wb") as out:  # a file, not a pipe: the server logs more than a pipe holds
                self.process = subprocess.Popen(
                    [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=out)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as response:
                        if response.status == 200:
                            return self
                except OSError:
                    pass
                time.sleep(0.1)
            self._stop()
        raise RuntimeError(f"prometheus did not start: {log.read_text()[-2000:]}")

    def api(self, path: str, **params) -> object:
        """The `data` of an HTTP API answer (/api/v1/<path>); raises on an error answer."""
        import json
        import urllib.parse

        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as err:  # 400/422: a bad query, with Prometheus's reason
            answer = json.load(err)
        if answer.get("status") != "success":
            raise AssertionError(f"{path} {params}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: Optional[float] = None) -> list:
        """An instant query's result: [{"metric": labels, "value": [t, "v"]}] (or "values" for a range)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        return self.api("query", **params)["result"]

    def wait_for(self, expr: str, check, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} never satisfied the check; last answer: {result}")
            time.sleep(0.2)

    def _stop(self) -> None:
        stop(self.process, timeout=10)

    def __exit__(self, *exc) -> None:
        self._stop()

"""Fixtures: the fake NVML library, compiled once per session, and a runner of `gputext` against it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import settings

from fakegpu import build_fake_nvml, default_system, fake_env, read_calls, render_scenario

Series = Dict[Tuple[str, frozenset], float]

# Property-based tests (tests/test_properties.py): "ci", the default, keeps the suite's time bounded;
# `pytest --hypothesis-profile long` tries many more inputs. No deadline (a loaded machine is slow, and
# tests assert no times) and no example database (no test writes outside its temp directories).
settings.register_profile("ci", max_examples=100, deadline=None, database=None)
settings.register_profile("long", max_examples=5000, deadline=None, database=None)
settings.load_profile("ci")


def parse_exposition(text: str) -> Series:
    """{(sample name, frozenset(labels)): value} from text exposition, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.timestamp is None, f"{sample.name} carries a timestamp"
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in series, f"duplicate series {key}"
            series[key] = sample.value
    return series


def value(series: Series, name: str, /, **labels: str) -> Optional[float]:
    """The value of the one series named `name` whose labels include `labels`."""
    found = [v for (n, ls), v in series.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


def require(*modules: str) -> None:
    """Skip a test whose optional dependencies (an extra) are missing; under CI=true, which installs
    every extra, fail instead, so that nothing is skipped there."""
    import importlib
    import os

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"needs {module}: {err}", allow_module_level=True)


def names_for_gpu(series: Series, gpu: str) -> set:
    return {n for (n, ls) in series if ("gpu", gpu) in ls}


# Where gputext keeps its state when no --state-dir is given (gputext/cli.py default_state_dir).
HOST_STATE_DIR = Path("/var/lib/gputext")


def _snapshot(path: Path) -> Optional[list]:
    if not path.exists():
        return None
    return sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir())


@pytest.fixture(scope="session", autouse=True)
def host_untouched(tmp_path_factory):
    """No test writes outside its temp directories, by construction: every gputext run, in a subprocess
    or in this process, that is given no --state-dir uses STATE_DIRECTORY, which points into the session's
    temp directory (as systemd's StateDirectory= would). The locale and width are fixed so that `show`
    prints the same on every machine. The xid collector reads an empty kernel log (GPUTEXT_KMSG), not the
    host's, unless a test gives it one. The host's own state directory is checked at the end."""
    before = _snapshot(HOST_STATE_DIR)
    patch = pytest.MonkeyPatch()
    default_state = tmp_path_factory.mktemp("default-state")
    patch.setenv("STATE_DIRECTORY", str(default_state))
    empty_log = tmp_path_factory.mktemp("kmsg") / "kmsg"
    empty_log.write_bytes(b"")
    patch.setenv("GPUTEXT_KMSG", str(empty_log))
    patch.setenv("LANG", "C.UTF-8")
    for name in ("LC_ALL", "LC_CTYPE", "COLUMNS", "NO_COLOR"):
        patch.delenv(name, raising=False)
    yield default_state
    patch.undo()
    assert _snapshot(HOST_STATE_DIR) == before, f"a test wrote into {HOST_STATE_DIR}"


@pytest.fixture(scope="session")
def fake_libdir(tmp_path_factory) -> Path:
    return build_fake_nvml(tmp_path_factory.mktemp("fake_nvml"))


class Node:
    """A fake GPU node: a scenario file, a state directory, and gputext run against them."""

    def __init__(self, libdir: Path, root: Path):
        self.libdir = libdir
        self.root = root
        self.scenario = root / "scenario.txt"
        self.state_dir = root / "state"
        self.calls = root / "calls.txt"

    def write(self, devices: List[dict], system: Optional[dict] = None) -> None:
        self.scenario.write_text(render_scenario(default_system(**(system or {})), devices))

    def env(self, tick: Optional[int] = None, nvml: bool = True) -> Dict[str, str]:
        env = fake_env(self.libdir, self.scenario, self.calls, tick)
        if not nvml:  # a node without the driver: nothing named libnvidia-ml.so.1 on the path
            env["LD_LIBRARY_PATH"] = ""
        return env

    def run(self, *args: str, tick: Optional[int] = None, nvml: bool = True, state: bool = True,
            **popen) -> subprocess.CompletedProcess:
        extra = ["--state-dir", str(self.state_dir)] if state and args and args[0] == "collect" else []
        return subprocess.run([sys.executable, "-m", "gputext", *args, *extra], env=self.env(tick, nvml),
                              capture_output=True, text=True, timeout=60, **popen)

    def collect(self, *args: str, **kw) -> Tuple[subprocess.CompletedProcess, Series]:
        """`gputext collect --out -` plus args; returns the process and its parsed output."""
        proc = self.run("collect", "--out", "-", *args, **kw)
        return proc, parse_exposition(proc.stdout)

    def call_counts(self) -> dict:
        return read_calls(self.calls) if self.calls.exists() else {}


@pytest.fixture
def node(fake_libdir, tmp_path) -> Node:
    return Node(fake_libdir, tmp_path)


@pytest.fixture
def nvml_here(node, monkeypatch):
    """The fake NVML for commands run in this process. The loader resolves LD_LIBRARY_PATH only when a
    process starts, but dlopen() finds a library already loaded by its soname, so after this pynvml's
    CDLL("libnvidia-ml.so.1") gets the fake; it reads the scenario named in the environment at each init."""
    import ctypes

    from fakegpu import LIB_NAME

    ctypes.CDLL(str(node.libdir / LIB_NAME), mode=ctypes.RTLD_GLOBAL)
    monkeypatch.setenv("FAKE_NVML_SCENARIO", str(node.scenario))
    monkeypatch.setenv("STATE_DIRECTORY", str(node.state_dir))
    return node

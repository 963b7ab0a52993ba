"""The documentation: README.md stays a front page, docs/ builds into a site without a broken link, the
generated reference is what the code gives, and every documented `gputext` command runs.

Every ```sh block in README.md and docs/ is run here against the fake NVML, with the well-known paths it
names moved into a temp directory, and must exit 0; a block that needs a real system (root, systemd,
kubectl, apt, a cluster) says so in the line before it, `<!-- not-tested: why -->`, and is skipped.
README's install-and-run block is run by .ci/run instead."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import require
from fakegpu import h100
from gputext.reference import generated
from test_install import install_block  # the block as .ci/run reads it

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 16 * 1024  # a few screens; the rest belongs in docs/
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
REGENERATE = "python -m gputext.reference"
SKIPPED = re.compile(r"<!-- (not-tested: \S.*|install-and-run: .*) -->")
# paths the documented commands name, and where they point here (under the test's temp directory)
WELL_KNOWN = {"/var/lib/node_exporter/textfile_collector/": "textfile/",
              "/var/lib/prometheus/node-exporter/": "debian-textfile/",
              "/path/": "path/"}


def sh_blocks(text: str) -> list:
    """(the comment line before it, its body) of every ```sh block."""
    return re.findall(r"(?:^(<!--.*?-->)\n)?^```sh\n(.*?)^```$", text, re.M | re.S)


def blocks() -> list:
    """(document, number, the comment line before the block, the block) of every ```sh block."""
    return [(path.relative_to(ROOT), n, comment, body)
            for path in DOCUMENTS for n, (comment, body) in enumerate(sh_blocks(path.read_text()), 1)]


def commands(body: str) -> list:
    return [line.strip() for line in body.splitlines() if line.strip() and not line.startswith("#")]


def unmarked() -> list:
    return [(path, n, body) for path, n, comment, body in blocks() if not SKIPPED.fullmatch(comment or "")]


def other_commands(body: str) -> list:
    return [line for line in commands(body) if not line.startswith("gputext ")]


@pytest.fixture
def shared_dir():
    """A directory under /tmp whose ancestors node_exporter's user may enter, as doctor checks (pytest's
    tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gputext-docs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_readme_is_a_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes: move the details into a page under docs/"


def test_install_page_gives_the_readme_command_step_by_step():
    install = (ROOT / "docs/install.md").read_text()
    first = next(body for comment, body in sh_blocks(install) if "apt-get" in body)
    assert " && ".join(first.strip().splitlines()) == install_block().strip(), (
        "docs/install.md's steps differ from README's install-and-run command: make them the same")


def test_site_builds_strict(tmp_path):
    """A broken link or anchor, or a page missing from mkdocs.yml's nav, fails the build."""
    require("mkdocs", "material")  # the docs extra: pip install '.[docs]'
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (site / "reference" / "metrics" / "index.html").is_file()


@pytest.mark.parametrize("path", sorted(generated(ROOT)))
def test_generated_reference_is_the_code(path):
    assert (ROOT / path).read_text() == generated(ROOT)[path], (
        f"{path} differs from what the code gives: regenerate it with `{REGENERATE}`")


def test_every_shell_block_is_run_or_marked():
    unrunnable = [f"{path}, block {n}: {other_commands(body)[0]}" for path, n, body in unmarked()
                  if other_commands(body)]
    assert not unrunnable, ("these blocks run what the test cannot run: mark each with <!-- not-tested: why --> "
                            "on the line before it, or make it gputext commands:\n" + "\n".join(unrunnable))


@pytest.mark.parametrize("body", [pytest.param(body, id=f"{path}:{n}") for path, n, body in unmarked()
                                  if not other_commands(body)])
def test_documented_commands_run(body, node, tmp_path, shared_dir):
    """The block runs, with bash -e, against two fake H100s, and exits 0."""
    for path, here in WELL_KNOWN.items():
        body = body.replace(path, f"{shared_dir / here}/")
        (shared_dir / here).mkdir(mode=0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gputext").write_text(f'#!/bin/sh\nexec {sys.executable} -m gputext "$@"\n')
    (bin_dir / "gputext").chmod(0o755)
    node.write([h100(0), h100(1)])
    host = tmp_path / "host"
    host.mkdir()
    env = {**node.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           # doctor checks the file the units write, the host's node_exporter and the kubelet: none of this
           # machine's
           "GPUTEXT_OUT": str(shared_dir / "textfile" / "gpu.prom"), "GPUTEXT_HOST_ROOT": str(host),
           "GPUTEXT_POD_RESOURCES_SOCKET": str(tmp_path / "kubelet.sock")}
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", body], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{body}\n{proc.stdout[-3000:]}\n{proc.stderr}"

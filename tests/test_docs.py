"""The documentation: README.md stays a front page, docs/ builds into a site without a broken link, and the
install steps in docs/install.md are the README's install-and-run command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import require
from test_install import install_block  # the block as .ci/run reads it

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 16 * 1024  # a few screens; the rest belongs in docs/


def sh_blocks(text: str) -> list:
    """(the comment line before it, its body) of every ```sh block."""
    return re.findall(r"(?:^(<!--.*?-->)\n)?^```sh\n(.*?)^```$", text, re.M | re.S)


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
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (site / "reference" / "metrics" / "index.html").is_file()

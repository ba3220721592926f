"""Every enveloped result file names the code it measured: the commit, or None outside a git checkout."""

from __future__ import annotations

import re
from pathlib import Path

from bench.common import commit, machine


def test_no_commit_outside_a_git_checkout(tmp_path: Path) -> None:
    assert commit(tmp_path) is None


def test_the_machine_block_carries_the_commit_and_the_date() -> None:
    info = machine()
    assert info["commit"] == commit()
    assert info["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", info["commit"])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", info["date"])

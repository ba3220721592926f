"""``mindstream train`` reuses the best checkpoint already there unless ``--retrain`` (or ``--resume``).

Compose runs the one-shot ``trainer`` on every ``docker compose up``; without the skip it retrained
and rewrote the base checkpoint each time before ``refresh`` could start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workers import cli

TINY_ENV = {
    "MINDSTREAM_DATA__DATASET": "amazonbook-demo",
    "MINDSTREAM_MIND__DIM": "8",
    "MINDSTREAM_MIND__MAXLEN": "5",
    "MINDSTREAM_TRAIN__BATCHES": "2",
    "MINDSTREAM_TRAIN__BATCH_SIZE": "16",
    "MINDSTREAM_TRAIN__NEGATIVES": "16",
    "MINDSTREAM_TRAIN__THREADS": "1",
}


@pytest.fixture
def tiny_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in {**TINY_ENV, "MINDSTREAM_STATE_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def _train(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    assert cli.main(["train", "--quiet", *flags]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def _versions(state_dir: Path) -> list[str]:
    return sorted(p.name for p in state_dir.rglob("v*") if p.is_dir() and p.name[1:].isdigit())


@pytest.mark.slow
def test_train_reuses_unless_retrain(tiny_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _train(capsys)
    assert first["best"] == "v1" and "reused" not in first
    assert _versions(tiny_env) == ["v1"]

    again = _train(capsys)
    assert again["reused"] == "v1", again
    assert _versions(tiny_env) == ["v1"], "a reuse must not write a checkpoint"

    retrained = _train(capsys, "--retrain")
    assert "reused" not in retrained and retrained["best"] == "v2"
    assert _versions(tiny_env) == ["v1", "v2"]


def test_reuse_does_not_load_the_data(
    tiny_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a best checkpoint there, nothing is trained or loaded; --retrain and --resume train."""
    from workers import offline
    from workers.settings import Settings

    root = offline.checkpoint_root(Settings(), TINY_ENV["MINDSTREAM_DATA__DATASET"])
    calls: list[bool] = []

    def fake_train(settings: Settings, *, dataset: object, resume: bool, quiet: bool = False) -> dict[str, Any]:
        calls.append(resume)
        return {"trained": True}

    monkeypatch.setattr(offline, "run_train", fake_train)
    monkeypatch.setattr(offline, "load", lambda settings, name=None: object())
    monkeypatch.setattr(offline, "open_checkpoint", lambda root, which: _Manifested("v7"))

    assert _train(capsys) == {"trained": True}, "no BEST pointer: train"
    root.mkdir(parents=True)
    (root / "BEST").write_text("v7\n")
    assert _train(capsys) == {"dataset": "amazonbook-demo", "reused": "v7", "checkpoints": str(root)}
    assert _train(capsys, "--retrain") == {"trained": True}
    assert _train(capsys, "--resume") == {"trained": True}
    assert calls == [False, False, True]


class _Manifested:
    def __init__(self, version: str) -> None:
        self.manifest = type("Manifest", (), {"version": version})()

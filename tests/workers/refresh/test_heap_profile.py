"""The refresh worker's opt-in heap profile: a leak made between rounds is found at its source line."""

from __future__ import annotations

import json
from pathlib import Path

from workers.refresh.heap_profile import FILE_NAME, HeapProfile
from workers.settings import RefreshSettings

LEAK_BYTES = 2 << 20  # per "round"
LEAK_LINE = next(n for n, line in enumerate(Path(__file__).read_text().splitlines(), 1) if line.endswith("# the leak"))


def test_a_leak_between_rounds_shows_at_its_line_and_grows_round_after_round(tmp_path: Path) -> None:
    profile = HeapProfile(tmp_path / FILE_NAME, top=5)
    kept: list[bytearray] = []
    profile.start()
    try:
        first = profile.after_round()
        for _ in range(2):
            kept.append(bytearray(LEAK_BYTES))  # the leak
            profile.after_round()
    finally:
        profile.stop()

    assert first["baseline"] is True and "growth_since_baseline" not in first
    written = json.loads((tmp_path / FILE_NAME).read_text())
    assert [s["round"] for s in written["samples"]] == [1, 2, 3]
    leaks = []
    for sample in written["samples"][1:]:
        assert sample["rss_mb"] > 0 and sample["traced_mb"] >= LEAK_BYTES / 2**20
        top = sample["growth_since_baseline"][0]
        assert top["where"] == f"{__file__}:{LEAK_LINE}"
        leaks.append(top["growth_kb"])
    assert leaks[0] >= LEAK_BYTES / 1024 and leaks[1] >= 2 * LEAK_BYTES / 1024  # grows with every round
    assert len(kept) == 2


def test_the_setting_is_off_by_default() -> None:
    assert RefreshSettings().heap_profile is False

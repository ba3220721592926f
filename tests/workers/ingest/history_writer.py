"""A writer process for the kill -9 tests (``python -m tests.workers.ingest.history_writer BACKEND DIR URL N BATCH``).

Resumes from the store's last offset (as the ingest worker does on assignment, with the previous batch
redelivered as well) and applies batches of the deterministic events of :func:`event_at` up to offset
``TOTAL - 1``, printing each batch's last offset once ``apply`` returned (the test kills it meanwhile).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr

from schemas.messages import ClickEvent
from workers.ingest.history_store import PartitionWriter, open_writer
from workers.settings import StateSettings

TOPIC = "clicks"
USERS = 7


def event_at(offset: int) -> ClickEvent:
    """The click at Kafka offset ``offset`` of the test's partition 0."""
    return ClickEvent(event_id=f"ev-{offset}", user_id=offset % USERS + 1, item_id=1000 + offset, ts=offset)


def state_settings(backend: str, url: str) -> StateSettings:
    return StateSettings(backend=backend, redis_url=SecretStr(url))


def write_until(writer: PartitionWriter, total: int, batch: int, report: bool = False) -> None:
    """Apply offsets from one batch before the stored position (a redelivery) up to ``total - 1``."""
    last = writer.last_offset(TOPIC, 0)
    start = 0 if last is None else max(0, last + 1 - batch)
    for first in range(start, total, batch):
        offsets = range(first, min(first + batch, total))
        writer.apply([event_at(o) for o in offsets], TOPIC, 0, offsets[-1])
        if report:
            print(offsets[-1], flush=True)


def main(argv: list[str]) -> int:
    backend, directory, url, total, batch = argv
    writer = open_writer(state_settings(backend, url), Path(directory), TOPIC, 0, dedupe_window=None)
    try:
        write_until(writer, int(total), int(batch), report=True)
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

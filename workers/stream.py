"""A continuous click stream over a data set's catalogue, and the paced sender that produces it.

:class:`ClickStream` (pure, seeded ``numpy.random.Generator``) walks users through the catalogue the
way the training data moves: a user's next click follows the item they clicked last (a successor of
it in some training sequence), so co-clicked items stay co-clicked; interests drift (with
``jump_share`` a click jumps to a popular item elsewhere in the catalogue); brand-new items are born
at ``new_items_per_s`` (fresh external ids no vocabulary knows), each next to a popular "parent"
item whose clicks it takes half of while it is young; and now and then a burst sends a share of all
clicks to one item for a few seconds. Item ids are external ids throughout.

:class:`StreamSender` paces any chunk source onto the clicks topic (first the held-out replay, then
the continuous stream) at ``rate`` clicks/s, with a batching producer (``stream.linger_ms``): a few
large batches cost the broker and the ingest worker less than many small ones. Clicks are keyed by
user, so a user's clicks stay in one partition, in order.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from confluent_kafka import Producer

from model.data.types import Dataset, IntArray
from workers.infra.kafka import Conf, close_producer, make_producer
from workers.runtime import StopFlag
from workers.settings import StreamSettings

__all__ = ["ClickStream", "StreamSender", "chunks_of"]

_CLICK: Final = '{"schema_version":1,"event_id":"%s%d","user_id":%d,"item_id":%d,"ts":%d}'  # a ClickEvent
_NEW_ITEM_ACTIVE_S: Final = 120.0  # a new item takes half of its parent's clicks this long
_NEW_ID_LOW: Final = 1 << 62  # fresh ids come from the top quarter of the id space

Chunk = tuple[IntArray, IntArray]  # user ids, item ids


@dataclass
class _Births:
    parent: dict[int, int] = field(default_factory=dict)  # parent item -> its young new item
    born: dict[int, float] = field(default_factory=dict)  # new item -> wall time of its birth
    first_click: dict[int, float] = field(default_factory=dict)  # new item -> wall time of its first click


class ClickStream:
    """``chunk(n, now)``: the next ``n`` clicks at wall time ``now`` (births and bursts follow ``now``)."""

    def __init__(
        self,
        catalogue: IntArray,
        successors: tuple[IntArray, IntArray],
        popularity: np.ndarray,
        users: IntArray,
        settings: StreamSettings,
        rng: np.random.Generator,
        *,
        jump_share: float = 0.1,
        known: Callable[[IntArray], np.ndarray] | None = None,
    ) -> None:
        self.catalogue = catalogue  # index -> external id
        self.offsets, self.next_index = successors  # CSR over catalogue indices
        weights = np.asarray(popularity, dtype=np.float64) + 1.0
        self.cdf = np.cumsum(weights / weights.sum())
        self.users = users
        self.settings = settings
        self.rng = rng
        self.jump_share = jump_share
        self.known = known
        self.anchor = self._popular(len(users))  # per user: catalogue index of the last click
        self.births = _Births()
        self.burst_item: int | None = None
        self.burst_until = 0.0
        self.bursts = 0
        self._next_birth: float | None = None
        self._next_burst: float | None = None
        self._taken: set[int] = set()

    @classmethod
    def from_dataset(cls, dataset: Dataset, users: IntArray, settings: StreamSettings) -> ClickStream:
        """Walks over ``dataset``'s training sequences; the catalogue is ``dataset.vocab.ids[1:]``."""
        train = dataset.train
        rows = dataset.vocab.ids.shape[0]
        src, dst = [], []
        for i in range(train.num_users):
            seq = train.sequence(i)
            src.append(seq[:-1])
            dst.append(seq[1:])
        a = np.concatenate(src) if src else np.zeros(0, np.int64)
        b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
        order = np.argsort(a, kind="stable")
        offsets = np.zeros(rows, dtype=np.int64)  # catalogue index = row - 1
        np.cumsum(np.bincount(a - 1, minlength=rows - 1), out=offsets[1:])
        popularity = np.bincount(train.items - 1, minlength=rows - 1)[: rows - 1]
        return cls(
            np.asarray(dataset.vocab.ids[1:], dtype=np.int64),
            (offsets, (b[order] - 1).astype(np.int64)),
            popularity,
            users,
            settings,
            np.random.default_rng(settings.seed),
            known=lambda ids: dataset.vocab.contains(ids),
        )

    def _popular(self, n: int) -> IntArray:
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.cdf) - 1).astype(np.int64)

    def _new_id(self) -> int:
        while True:
            candidate = int(self.rng.integers(_NEW_ID_LOW, np.iinfo(np.int64).max))
            if candidate in self._taken:
                continue
            if self.known is not None and bool(self.known(np.array([candidate], dtype=np.int64))[0]):
                continue
            self._taken.add(candidate)
            return candidate

    def _events(self, now: float) -> None:
        s = self.settings
        if s.new_items_per_s > 0:
            if self._next_birth is None:
                self._next_birth = now
            while now >= self._next_birth:
                parent = int(self.catalogue[self._popular(1)[0]])
                item = self._new_id()
                self.births.parent[parent] = item
                self.births.born[item] = self._next_birth
                self._next_birth += 1.0 / s.new_items_per_s
        young = now - _NEW_ITEM_ACTIVE_S
        self.births.parent = {p: i for p, i in self.births.parent.items() if self.births.born[i] >= young}
        if self._next_burst is None:
            self._next_burst = now + float(self.rng.exponential(s.burst_every_s))
        if now >= self._next_burst:
            young_items = list(self.births.parent.values())
            if young_items and self.rng.random() < 0.5:
                self.burst_item = young_items[int(self.rng.integers(len(young_items)))]
            else:
                self.burst_item = int(self.catalogue[self._popular(1)[0]])
            self.burst_until = now + s.burst_s
            self.bursts += 1
            self._next_burst = now + float(self.rng.exponential(s.burst_every_s))

    def chunk(self, n: int, now: float) -> Chunk:
        self._events(now)
        who = self.rng.integers(0, len(self.users), n)
        anchor = self.anchor[who]
        degree = self.offsets[anchor + 1] - self.offsets[anchor] if len(self.offsets) else np.zeros(n, np.int64)
        pick = self.offsets[anchor] + (self.rng.random(n) * np.maximum(degree, 1)).astype(np.int64)
        walk = self.next_index[np.minimum(pick, max(len(self.next_index) - 1, 0))] if len(self.next_index) else anchor
        jump = (degree == 0) | (self.rng.random(n) < self.jump_share)
        index = np.where(jump, self._popular(n), walk)
        self.anchor[who] = index
        items = self.catalogue[index].copy()
        if self.births.parent:
            take = self.rng.random(n) < 0.5
            for j in np.flatnonzero(take):
                young = self.births.parent.get(int(items[j]))
                if young is not None:
                    items[j] = young
        if self.burst_item is not None and now < self.burst_until:
            items[self.rng.random(n) < self.settings.burst_share] = self.burst_item
        for item in items[items >= _NEW_ID_LOW].tolist():
            self.births.first_click.setdefault(int(item), now)
        return self.users[who], items


def chunks_of(pairs: Iterator[tuple[int, int]]) -> Callable[[int, float], Chunk | None]:
    """A chunk source over ``(user, item)`` pairs (the held-out replay); None once they run out."""

    def take(n: int, _now: float) -> Chunk | None:
        got = [p for _, p in zip(range(n), pairs, strict=False)]
        if not got:
            return None
        arr = np.asarray(got, dtype=np.int64)
        return arr[:, 0], arr[:, 1]

    return take


class StreamSender:
    """Produces clicks from a list of sources, one after the other, at ``rate`` clicks/s."""

    def __init__(
        self,
        conf: Conf,
        topic: str,
        rate: float,
        *,
        linger_ms: int,
        tick_s: float = 0.01,
    ) -> None:
        self.conf = conf
        self.topic = topic
        self.rate = rate
        self.linger_ms = linger_ms
        self.tick_s = tick_s
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.phase = "starting"
        self.prefix = f"s-{uuid.uuid4().hex[:8]}-"
        self._lock = threading.Lock()

    def _ack(self, error: object, _msg: object) -> None:
        with self._lock:
            if error is None:
                self.delivered += 1
            else:
                self.failed += 1

    def run(self, sources: list[tuple[str, Callable[[int, float], Chunk | None]]], stop: StopFlag) -> None:
        producer = make_producer(
            self.conf,
            {
                "linger.ms": self.linger_ms,
                "queue.buffering.max.messages": 1_000_000,
            },
        )
        try:
            for name, source in sources:
                self.phase = name
                began, base = time.monotonic(), self.sent
                while not stop.wait(self.tick_s):
                    due = int((time.monotonic() - began) * self.rate) - (self.sent - base)
                    if due <= 0:
                        producer.poll(0)
                        continue
                    chunk = source(due, time.time())
                    if chunk is None:
                        break
                    self._produce(producer, chunk)
                if stop.is_set():
                    break
        finally:
            self.phase = "stopped"
            close_producer(producer, 30)

    def _produce(self, producer: Producer, chunk: Chunk) -> None:
        wall_ms = int(time.time() * 1000)
        topic = self.topic
        for user, item in zip(chunk[0].tolist(), chunk[1].tolist(), strict=True):
            body = _CLICK % (self.prefix, self.sent, user, item, wall_ms)
            while True:
                try:
                    producer.produce(topic, key=str(user).encode(), value=body.encode(), on_delivery=self._ack)
                    break
                except BufferError:
                    producer.poll(0.01)
            self.sent += 1
        producer.poll(0)

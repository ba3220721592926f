"""Replays held-out users' clicks as a live click stream (what ``mindstream up`` feeds the system)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
from confluent_kafka import Producer

from model.data.types import HeldOut
from schemas.codec import encode
from schemas.messages import ClickEvent
from workers.runtime import StopFlag


def held_out_clicks(*sets: HeldOut) -> Iterator[tuple[int, int]]:
    """``(user_id, item_id)`` of every held-out user's whole sequence (history then truth),
    interleaved across users in order, the way a live stream of many users looks. Truth items no
    vocabulary knows (negative placeholders, see :func:`model.vocab.map_truth`) are left out."""
    sequences = [
        (int(uid), (seq := np.concatenate([hist, truth]))[seq > 0])
        for held in sets
        for uid, hist, truth in zip(held.user_ids, held.histories, held.truths, strict=True)
    ]
    longest = max((len(s) for _, s in sequences), default=0)
    for position in range(longest):
        for uid, seq in sequences:
            if position < len(seq):
                yield uid, int(seq[position])


class Replayer:
    """Produces clicks at ``rate`` events/s; counts what it sent."""

    def __init__(self, producer: Producer, topic: str, rate: float) -> None:
        self.producer = producer
        self.topic = topic
        self.rate = rate
        self.sent = 0
        self.run_id = uuid.uuid4().hex[:8]

    def run(self, clicks: Iterator[tuple[int, int]], stop: StopFlag) -> None:
        began = time.monotonic()
        for user_id, item_id in clicks:
            if stop.is_set():
                break
            event = ClickEvent(
                event_id=f"replay-{self.run_id}-{self.sent}",
                user_id=user_id,
                item_id=item_id,
                ts=int(time.time() * 1000),
            )
            self.producer.produce(self.topic, encode(event), key=event.kafka_key())
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - began)
            if ahead > 0:
                self.producer.poll(0)
                if stop.wait(ahead):
                    break
        self.producer.flush(10)

"""Dead-letter conventions: original key and bytes as they came, original headers kept, plus these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from schemas.headers import Headers, HeaderValue, get_header, header_list

DLQ_REASON: Final = "dlq_reason"
DLQ_TOPIC: Final = "dlq_topic"
DLQ_PARTITION: Final = "dlq_partition"
DLQ_OFFSET: Final = "dlq_offset"
DLQ_HEADERS: Final = (DLQ_REASON, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET)
# Present only on a letter cut to fit the dead-letter topic's record size: the original record's size in
# bytes (key, value, headers and framing); the value was cut, original headers that did not fit dropped.
DLQ_TRUNCATED: Final = "dlq_truncated"
MAX_REASON_LENGTH: Final = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why and where from a message was dead-lettered."""

    reason: str
    topic: str
    partition: int
    offset: int

    def headers(self, original: Headers | None, truncated_from: int | None = None) -> list[tuple[str, HeaderValue]]:
        """The original headers (earlier ``dlq_*`` ones dropped) followed by this letter's; ``truncated_from``:
        the original record's size, for a letter that was cut (:data:`DLQ_TRUNCATED`)."""
        kept = [(k, v) for k, v in header_list(original) if k not in DLQ_HEADERS and k != DLQ_TRUNCATED]
        cut = [(DLQ_TRUNCATED, str(truncated_from).encode("ascii"))] if truncated_from is not None else []
        reason = self.reason
        if len(reason) > MAX_REASON_LENGTH:
            reason = reason[: MAX_REASON_LENGTH - 1] + "…"
        return [
            *kept,
            (DLQ_REASON, reason.encode("utf-8")),
            (DLQ_TOPIC, self.topic.encode("utf-8")),
            (DLQ_PARTITION, str(self.partition).encode("ascii")),
            (DLQ_OFFSET, str(self.offset).encode("ascii")),
            *cut,
        ]

    @classmethod
    def from_headers(cls, headers: Headers | None) -> DeadLetter | None:
        """Read a dead letter back from a DLQ message's headers; None if they are not all there."""
        reason, topic, partition, offset = (get_header(headers, name) for name in DLQ_HEADERS)
        if reason is None or topic is None or partition is None or offset is None:
            return None
        try:
            return cls(reason=reason, topic=topic, partition=int(partition), offset=int(offset))
        except ValueError:
            return None

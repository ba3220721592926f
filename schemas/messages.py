"""Wire contracts: the JSON bodies that travel on the Kafka topics.

Every model is strict (no silent string-to-int coercion), forbids unknown fields and is frozen.
Kafka keys and headers are not body fields: see ``ClickEvent.kafka_key`` and ``schemas.headers``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Final = 1
MAX_ID: Final = 2**63 - 1  # ids are int64 in Milvus and Paddle
MAX_EVENT_ID_LENGTH: Final = 128
MAX_SEGMENT_LENGTH: Final = 32
MAX_USERS_PER_REQUEST: Final = 256
MAX_SEQUENCE_LENGTH: Final = 1000
MAX_TOP_K: Final = 1000
DEFAULT_TOP_K: Final = 50
MAX_DIVERSITY: Final = 1000.0
MAX_ERROR_MESSAGE_LENGTH: Final = 1000

SchemaVersion = Literal[1]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
ClickSequence = Annotated[list[Id], Field(min_length=1, max_length=MAX_SEQUENCE_LENGTH)]


class WireModel(BaseModel):
    """Base of every message body."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    schema_version: SchemaVersion = SCHEMA_VERSION


class ClickEvent(WireModel):
    """One click, published on the clicks topic with the user id as Kafka key."""

    event_id: str = Field(
        min_length=1,
        max_length=MAX_EVENT_ID_LENGTH,
        pattern=r"^[!-~]+$",
        description="Unique id chosen by the producer (printable ASCII, no spaces); used for de-duplication",
    )
    user_id: Id
    item_id: Id
    ts: int = Field(ge=0, le=MAX_ID, description="Event time, epoch milliseconds")
    segment: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SEGMENT_LENGTH,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Partition of the catalogue (region, language) whose vectors this click refreshes",
    )

    def kafka_key(self) -> bytes:
        """The Kafka key: the user id as decimal ASCII, so one user's clicks stay in order."""
        return str(self.user_id).encode("ascii")


class RecallRequest(WireModel):
    """A batch of users to recall for: explicit click sequences OR user ids with streamed history.

    Headers ``correlation_id`` and ``reply_to`` travel as Kafka headers, not in this body.
    """

    hist_item: list[ClickSequence] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_USERS_PER_REQUEST,
        description="One click sequence per user, newest last",
    )
    user_ids: list[Id] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_USERS_PER_REQUEST,
        description="Users whose history the workers collected from the clicks topic",
    )
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=MAX_TOP_K)
    diversity: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DIVERSITY,
        allow_inf_nan=False,
        description="Trade score for a broader list (ComiRec's greedy merge of the K x top_k candidates: each pick "
        "maximises score / spread - diversity x its summed similarity to the items already picked, by categories "
        "where the catalogue has them, item vectors otherwise); 0 or absent = merge by score",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> RecallRequest:
        if (self.hist_item is None) == (self.user_ids is None):
            raise ValueError("give exactly one of hist_item or user_ids")
        return self

    @property
    def n_users(self) -> int:
        users = self.hist_item if self.hist_item is not None else self.user_ids
        return len(users or ())


class RecallReply(WireModel):
    """Candidates per user, in request order, best first."""

    items: list[list[int]]
    scores: list[list[float]]
    model_version: str = Field(description="Version of the model that produced the searched vectors")
    generation: int = Field(
        default=0, ge=0, description="Fast-path generation of that version searched (0: the version as built)"
    )
    collection: str = Field(description="Milvus collection the live alias pointed at")
    took_ms: float = Field(ge=0)

    @model_validator(mode="after")
    def _aligned(self) -> RecallReply:
        if len(self.items) != len(self.scores) or any(
            len(i) != len(s) for i, s in zip(self.items, self.scores, strict=True)
        ):
            raise ValueError("items and scores must have the same shape")
        return self


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    TIMEOUT = "timeout"


class ErrorReply(WireModel):
    """The answer when a request cannot be served: never silence."""

    code: ErrorCode
    message: str = Field(max_length=MAX_ERROR_MESSAGE_LENGTH)

    @field_validator("message", mode="before")
    @classmethod
    def _truncate(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_ERROR_MESSAGE_LENGTH:
            return value[: MAX_ERROR_MESSAGE_LENGTH - 1] + "…"
        return value

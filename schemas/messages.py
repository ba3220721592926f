"""Wire contracts: the JSON bodies that travel on the Kafka topics.

Every model is strict (no silent string-to-int coercion), forbids unknown fields and is frozen.
Kafka keys and headers are not body fields: see ``ClickEvent.kafka_key`` and ``schemas.headers``.

Fields added after a message first shipped are optional, default to ``None`` (= the behaviour before
they existed) and are left out of the encoded body while ``None`` (:data:`OMIT_NONE`): a newer writer
that does not use them sends exactly the bytes an older reader accepts. What a reader accepts from a
newer writer, and when ``schema_version`` changes: ``docs/wire-protocol.md`` (compatibility policy).
"""

from __future__ import annotations

from collections.abc import Collection
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
# The catalogue (items topic) and per-request filters.
MAX_TITLE_LENGTH: Final = 256
MAX_CATEGORY_LENGTH: Final = 64
MAX_CATEGORIES_PER_ITEM: Final = 32
MAX_FILTER_SEGMENTS: Final = 64  # refresh.max_segments' ceiling of named segments is 1000; callers name a few
MAX_FILTER_CATEGORIES: Final = 64
MAX_EXCLUDE_ITEMS: Final = 1000
SEGMENT_PATTERN: Final = r"^[A-Za-z0-9_-]+$"
# Printable text: no control characters (C0, DEL, C1), no '"' or '\' (a category goes into Milvus filter
# expressions as a double-quoted literal, so it never needs escaping), no leading or trailing white space.
CATEGORY_PATTERN: Final = r'^[^\s"\\\x00-\x1f\x7f-\x9f](?:[^"\\\x00-\x1f\x7f-\x9f]*[^\s"\\\x00-\x1f\x7f-\x9f])?$'
TITLE_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]+$"

SchemaVersion = Literal[1]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
ClickSequence = Annotated[list[Id], Field(min_length=1, max_length=MAX_SEQUENCE_LENGTH)]
Segment = Annotated[str, Field(min_length=1, max_length=MAX_SEGMENT_LENGTH, pattern=SEGMENT_PATTERN)]
Category = Annotated[str, Field(min_length=1, max_length=MAX_CATEGORY_LENGTH, pattern=CATEGORY_PATTERN)]
RecallSource = Literal["model", "popular"]


def _is_none(value: object) -> bool:
    return value is None


OMIT_NONE: Final = _is_none
"""``exclude_if`` of every field added after its message shipped: absent from the body while None."""


def _unique(values: list[str] | None) -> list[str] | None:
    """The list without repeats, first occurrences in order."""
    return None if values is None else list(dict.fromkeys(values))


class WireModel(BaseModel):
    """Base of every message body."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    schema_version: SchemaVersion = SCHEMA_VERSION


class _Part(BaseModel):
    """Base of a nested object of a message body (no ``schema_version`` of its own)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


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


class RecallFilters(_Part):
    """Which items a recall may return, applied to the candidates before they are ranked (every
    condition given must hold). An item without a segment is in no named segment; an item without
    categories (none announced on the items topic) has none."""

    include_segments: list[Segment] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_FILTER_SEGMENTS,
        description="Only items of one of these segments (catalogue partitions: region, language)",
    )
    exclude_segments: list[Segment] | None = Field(
        default=None, max_length=MAX_FILTER_SEGMENTS, description="No item of any of these segments"
    )
    include_categories: list[Category] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_FILTER_CATEGORIES,
        description="Only items with at least one of these categories",
    )
    exclude_categories: list[Category] | None = Field(
        default=None, max_length=MAX_FILTER_CATEGORIES, description="No item with any of these categories"
    )
    exclude_items: list[Id] | None = Field(
        default=None, max_length=MAX_EXCLUDE_ITEMS, description="Never these items (for every user of the request)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RecallFilters:
        for kind, include, exclude in (
            ("segment", self.include_segments, self.exclude_segments),
            ("category", self.include_categories, self.exclude_categories),
        ):
            both = sorted(set(include or ()) & set(exclude or ()))
            if both:
                raise ValueError(f"{kind} {both[0]!r} is both included and excluded")
        return self

    def admits(self, segment: str | None, categories: Collection[str], item_id: int | None = None) -> bool:
        """Whether an item with this segment and these categories passes (the reference meaning of
        the filters, which a Milvus expression or the popular fallback must reproduce)."""
        if item_id is not None and self.exclude_items and item_id in self.exclude_items:
            return False
        if self.include_segments is not None and segment not in self.include_segments:
            return False
        if self.exclude_segments and segment in self.exclude_segments:
            return False
        if self.include_categories is not None and not any(c in categories for c in self.include_categories):
            return False
        return not (self.exclude_categories and any(c in categories for c in self.exclude_categories))


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
    # Added after schema_version 1 shipped (absent = as before; see docs/wire-protocol.md).
    exclude_seen: bool | None = Field(
        default=None,
        exclude_if=OMIT_NONE,
        description="Leave out each user's history: for user_ids the streamed history recall reads, for hist_item "
        "the given sequence; still top_k items when the catalogue has enough. Absent or false = history items may "
        "be returned (the behaviour before this field)",
    )
    filters: RecallFilters | None = Field(
        default=None,
        exclude_if=OMIT_NONE,
        description="Restrict the candidates (segments, categories, items), applied inside the search: top_k items "
        "when enough match. Absent = every available item",
    )
    fallback: Literal["popular"] | None = Field(
        default=None,
        exclude_if=OMIT_NONE,
        description="What answers a user with no usable history (unknown user, or only unknown items): 'popular' = "
        "the items most clicked in the recent window (decayed counts), available and passing the filters; the "
        "reply's source then says which users it answered. Absent = an empty list for such a user, and no source "
        "in the reply (the behaviour before this field)",
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
    # Added after schema_version 1 shipped (absent = as before; see docs/wire-protocol.md).
    source: list[RecallSource] | None = Field(
        default=None,
        exclude_if=OMIT_NONE,
        description="Per user, in request order: what answered, 'model' (the search; possibly an empty list) or "
        "'popular' (the fallback for a user with no usable history). Present when the request asked for a "
        "fallback; absent from older workers' replies",
    )

    @model_validator(mode="after")
    def _aligned(self) -> RecallReply:
        if len(self.items) != len(self.scores) or any(
            len(i) != len(s) for i, s in zip(self.items, self.scores, strict=True)
        ):
            raise ValueError("items and scores must have the same shape")
        if self.source is not None and len(self.source) != len(self.items):
            raise ValueError("source must have one entry per user")
        return self


class ItemEvent(WireModel):
    """One item's state in the catalogue, published on the items topic (compacted) with the item id as
    Kafka key (:meth:`kafka_key`). The event is the item's whole state: a reader keeps, per item, the
    event with the newest ``ts`` (ties: the later record) and forgets what an older one said; a field
    absent here is absent from the item. An item announced before its first click is known (its
    metadata) but recallable only once the model can place it (clicks)."""

    item_id: Id
    ts: int = Field(ge=0, le=MAX_ID, description="Time of this state, epoch milliseconds (the newest wins)")
    available: bool = Field(
        description="False: the item is withdrawn (out of stock, taken down, blocked) and never recalled until an "
        "event makes it available again"
    )
    title: str | None = Field(
        default=None, min_length=1, max_length=MAX_TITLE_LENGTH, pattern=TITLE_PATTERN, description="Display title"
    )
    categories: list[Category] | None = Field(
        default=None,
        max_length=MAX_CATEGORIES_PER_ITEM,
        description="Categories (genres), for the page, the diversity merge and the filters; repeats are dropped",
    )
    segment: Segment | None = Field(
        default=None, description="Partition of the catalogue (region, language) the item belongs to"
    )

    _unique_categories = field_validator("categories")(_unique)

    def kafka_key(self) -> bytes:
        """The Kafka key: the item id as decimal ASCII, so compaction keeps one state per item."""
        return str(self.item_id).encode("ascii")


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

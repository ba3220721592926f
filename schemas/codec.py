"""Bytes <-> wire models. Decoding never raises anything but ``DecodeError``.

Readers follow the compatibility policy of ``docs/wire-protocol.md``: requests and events are read
strictly (an unknown field is refused, naming it), replies leniently by clients
(:func:`decode_reply` with ``lenient=True``: unknown fields ignored, an unknown error code read as
``internal``), so that a worker newer than its callers never breaks them.
"""

from __future__ import annotations

from typing import Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from schemas.headers import CORRELATION_ID, REPLY_TO, Headers, get_header
from schemas.messages import (
    MAX_ERROR_MESSAGE_LENGTH,
    ClickEvent,
    ErrorCode,
    ErrorReply,
    ItemEvent,
    RecallReply,
    RecallRequest,
    SchemaVersion,
)

__all__ = [
    "CORRELATION_ID",
    "MAX_PAYLOAD_BYTES",
    "REPLY_TO",
    "DecodeError",
    "Headers",
    "decode",
    "decode_click",
    "decode_item",
    "decode_reply",
    "decode_request",
    "encode",
    "get_header",
]

MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
MAX_REASON_LENGTH: Final = 300
_SHOWN_ERRORS: Final = 3

M = TypeVar("M", bound=BaseModel)
_REPLY: TypeAdapter[RecallReply | ErrorReply] = TypeAdapter(RecallReply | ErrorReply)


class _LenientReply(RecallReply):
    """A reply as a client reads it: fields it does not know (a newer worker's) are ignored."""

    model_config = ConfigDict(extra="ignore")


class _LenientError(BaseModel):
    """An error reply as a client reads it: unknown fields ignored, any code kept as text."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    schema_version: SchemaVersion = 1
    code: str = Field(max_length=64)
    message: str = Field(max_length=MAX_ERROR_MESSAGE_LENGTH)

    @field_validator("message", mode="before")
    @classmethod
    def _truncate(cls, value: object) -> object:
        return ErrorReply._truncate(value)

    def reply(self) -> ErrorReply:
        """The :class:`ErrorReply`; a code this client does not know is ``internal``, named in the message."""
        known = {code.value for code in ErrorCode}
        if self.code in known:
            return ErrorReply(code=ErrorCode(self.code), message=self.message)
        return ErrorReply(code=ErrorCode.INTERNAL, message=f"{self.code}: {self.message}")


_LENIENT_REPLY: TypeAdapter[_LenientReply | _LenientError] = TypeAdapter(_LenientReply | _LenientError)


class DecodeError(ValueError):
    """A message that cannot become a wire model; ``reason`` is short and never echoes the payload."""

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def encode(model: BaseModel) -> bytes:
    """Compact JSON, UTF-8."""
    return model.model_dump_json().encode("utf-8")


def _reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return f"malformed JSON: {errors[0]['msg'].removeprefix('Invalid JSON: ')}"
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:_SHOWN_ERRORS]]
    if len(errors) > _SHOWN_ERRORS:
        parts.append(f"(+{len(errors) - _SHOWN_ERRORS} more)")
    text = "; ".join(parts)
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


def _text(raw: bytes | None) -> str:
    if raw is None:
        raise DecodeError("empty message (no value)")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}", ErrorCode.TOO_LARGE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8 (byte {exc.start})") from None


def _validated(adapter_or_model: type[M] | TypeAdapter[M], text: str) -> M:
    try:
        if isinstance(adapter_or_model, TypeAdapter):
            return adapter_or_model.validate_json(text)
        return adapter_or_model.model_validate_json(text)
    except ValidationError as exc:
        too_large = any(e["type"] == "too_long" for e in exc.errors(include_url=False, include_input=False))
        raise DecodeError(_reason(exc), ErrorCode.TOO_LARGE if too_large else ErrorCode.BAD_REQUEST) from None


def decode(raw: bytes | None, model: type[M]) -> M:
    """Any wire model from bytes."""
    return _validated(model, _text(raw))


def decode_click(raw: bytes | None) -> ClickEvent:
    return decode(raw, ClickEvent)


def decode_request(raw: bytes | None) -> RecallRequest:
    return decode(raw, RecallRequest)


def decode_item(raw: bytes | None) -> ItemEvent:
    """An item's state from the items topic."""
    return decode(raw, ItemEvent)


def decode_reply(raw: bytes | None, *, lenient: bool = False) -> RecallReply | ErrorReply:
    """A reply on the replies topic: candidates or an error.

    ``lenient`` (what clients use): fields a newer worker added are ignored, and an error code this
    version does not know becomes ``internal`` with the code named in the message; everything this
    version knows is still checked as strictly (types, shapes, ``schema_version``).
    """
    if not lenient:
        return _validated(_REPLY, _text(raw))
    reply = _validated(_LENIENT_REPLY, _text(raw))
    if isinstance(reply, _LenientError):
        return reply.reply()
    return RecallReply.model_construct(reply.model_fields_set, **dict(reply))

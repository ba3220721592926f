"""Bytes <-> wire models. Decoding never raises anything but ``DecodeError``."""

from __future__ import annotations

from typing import Final, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.headers import CORRELATION_ID, REPLY_TO, Headers, get_header
from schemas.messages import ClickEvent, ErrorCode, ErrorReply, RecallReply, RecallRequest

__all__ = [
    "CORRELATION_ID",
    "MAX_PAYLOAD_BYTES",
    "REPLY_TO",
    "DecodeError",
    "Headers",
    "decode",
    "decode_click",
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


def decode_reply(raw: bytes | None) -> RecallReply | ErrorReply:
    """A reply on the replies topic: candidates or an error."""
    return _validated(_REPLY, _text(raw))

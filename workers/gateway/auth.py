"""Bearer tokens of the gateway: the admin token for the destructive endpoints, the read token for a user's history.

Admin endpoints (``/rec/insert_data``, ``/rec/drop``, ``/rec/rollback``, ``/rec/refresh``: :func:`admin_guard`):

* no token configured (``MINDSTREAM_HTTP__ADMIN_TOKEN`` unset): every call is refused (403), so an
  unconfigured gateway can never be used to drop the live collection;
* no ``Authorization: Bearer ...`` header: 401 with ``WWW-Authenticate: Bearer``;
* a wrong token: 403.

A user's history (``POST /rec/recall`` with ``user_ids``, ``POST /ui/api/explore`` with ``user_id``:
:class:`HistoryGuard`) answers with what that user clicked, so it needs the read token
(``MINDSTREAM_HTTP__READ_TOKEN``) or the admin token; ``hist_item`` and ``items`` (the caller's own
ids) stay open. The same rules, answered as an ``ErrorReply`` (code ``bad_request``): neither token
configured = 403, no bearer token = 401 with ``WWW-Authenticate: Bearer``, a wrong one = 403.

Tokens are compared in constant time (``secrets.compare_digest``) and never logged.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Final

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr

from schemas.messages import ErrorCode, ErrorReply

__all__ = ["NOT_CONFIGURED", "HistoryGuard", "Refusal", "admin_guard", "bearer"]

log = logging.getLogger(__name__)

NOT_CONFIGURED: Final = "admin endpoints are disabled: no admin token is configured (set MINDSTREAM_HTTP__ADMIN_TOKEN)"
HISTORY_NOT_CONFIGURED: Final = (
    "a user's history is not served here: no read token is configured (set MINDSTREAM_HTTP__READ_TOKEN); "
    "send hist_item (the ids themselves) instead"
)
HISTORY_NEEDS_TOKEN: Final = (
    "a user's history needs a token: send 'Authorization: Bearer <read token>' (MINDSTREAM_HTTP__READ_TOKEN, "
    ".mindstream/read-token on the local stack; the admin token works too)"
)
HISTORY_WRONG_TOKEN: Final = "invalid token for a user's history"
bearer = HTTPBearer(  # one scheme in the OpenAPI document: /docs' "Authorize" sends it to every route that lists it
    auto_error=False,
    description="The admin token (settings.http.admin_token); for a user's history (user_ids) the read token "
    "(settings.http.read_token) or the admin token",
)


def _secret(token: SecretStr | None) -> bytes | None:
    """The token's bytes; an unset or empty token is no token."""
    value = token.get_secret_value().encode("utf-8") if token is not None else b""
    return value or None


def admin_guard(token: SecretStr | None) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    """A FastAPI dependency that lets a request through only with ``Authorization: Bearer <token>``."""
    expected = _secret(token)

    def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if expected is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_CONFIGURED)
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "admin token required: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(credentials.credentials.encode("utf-8"), expected):
            log.warning("admin call refused: wrong bearer token")
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid admin token")

    return require_admin


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer to a request that may not see a user's history."""

    status: int
    reply: ErrorReply
    headers: dict[str, str] = field(default_factory=dict)


class HistoryGuard:
    """Who may read a user's history: whoever sends the read token or the admin token."""

    def __init__(self, read_token: SecretStr | None, admin_token: SecretStr | None) -> None:
        self._tokens = [t for t in (_secret(read_token), _secret(admin_token)) if t is not None]

    def refuse(self, authorization: str | None) -> Refusal | None:
        """None when ``authorization`` (the header's value, or None) carries one of the tokens, else the refusal."""
        if not self._tokens:
            return Refusal(403, ErrorReply(code=ErrorCode.BAD_REQUEST, message=HISTORY_NOT_CONFIGURED))
        scheme, presented = get_authorization_scheme_param(authorization)
        if scheme.lower() != "bearer" or not presented:
            reply = ErrorReply(code=ErrorCode.BAD_REQUEST, message=HISTORY_NEEDS_TOKEN)
            return Refusal(401, reply, {"WWW-Authenticate": "Bearer"})
        given = presented.encode("utf-8")
        matches = [secrets.compare_digest(given, token) for token in self._tokens]  # every token compared
        if any(matches):
            return None
        log.warning("user history refused: wrong bearer token")
        return Refusal(403, ErrorReply(code=ErrorCode.BAD_REQUEST, message=HISTORY_WRONG_TOKEN))

    def refuse_scope(self, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
        """:meth:`refuse` for an ASGI scope's raw headers (decoded as Starlette decodes them)."""
        for name, value in headers:
            if name == b"authorization":
                return self.refuse(value.decode("latin-1"))
        return self.refuse(None)

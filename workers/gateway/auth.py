"""Bearer-token guard of the gateway's destructive endpoints (``/rec/insert_data``, ``/rec/drop``).

* no token configured (``MINDSTREAM_HTTP__ADMIN_TOKEN`` unset): every call is refused (403), so an
  unconfigured gateway can never be used to drop the live collection;
* no ``Authorization: Bearer ...`` header: 401 with ``WWW-Authenticate: Bearer``;
* a wrong token: 403. Tokens are compared in constant time (``hmac.compare_digest``) and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Annotated, Final

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

__all__ = ["NOT_CONFIGURED", "admin_guard"]

log = logging.getLogger(__name__)

NOT_CONFIGURED: Final = "admin endpoints are disabled: no admin token is configured (set MINDSTREAM_HTTP__ADMIN_TOKEN)"
_bearer = HTTPBearer(auto_error=False, description="The gateway's admin token (settings.http.admin_token)")


def admin_guard(token: SecretStr | None) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    """A FastAPI dependency that lets a request through only with ``Authorization: Bearer <token>``."""
    expected = token.get_secret_value().encode("utf-8") if token is not None else None

    def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if not expected:
            raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_CONFIGURED)
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "admin token required: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode("utf-8"), expected):
            log.warning("admin call refused: wrong bearer token")
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid admin token")

    return require_admin

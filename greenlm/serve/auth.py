"""The API key (`--api-key`): /v1/*, /energy and /dashboard want it (the last two show per-request and load
data); /health and /metrics stay open, as vLLM's do.

A client sends `Authorization: Bearer KEY`. A browser cannot add that header when it navigates to
/dashboard, so HTTP Basic credentials whose password is the key (any user name) are taken too, and the
dashboard routes answer 401 with a Basic challenge: the browser asks once, and its later fetches of
/dashboard/data carry the same credentials. Keys are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from greenlm.serve.errors import Unauthorized

BASIC_CHALLENGE = 'Basic realm="greenlm"'
API_MESSAGE = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
BROWSER_MESSAGE = (
    "missing or wrong API key: sign in with the key as the password (any user name), or send the header "
    "'Authorization: Bearer <key>'"
)


def key_matches(authorization: str, key: str) -> bool:
    """Whether an Authorization header carries `key`: as a Bearer token, or as a Basic password."""
    scheme, _, credentials = authorization.strip().partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer":
        given = credentials
    elif scheme == "basic":
        try:
            pair = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _user, colon, given = pair.partition(":")
        if not colon:
            return False
    else:
        return False
    return hmac.compare_digest(given.encode(), key.encode())


def _key(request: Request) -> str | None:
    return request.app.state.api_key


def require_key(request: Request) -> None:
    """A route dependency for API clients (/v1/*, /energy)."""
    key = _key(request)
    if key is not None and not key_matches(request.headers.get("authorization", ""), key):
        raise Unauthorized(API_MESSAGE)


def require_key_or_sign_in(request: Request) -> None:
    """A route dependency for pages a browser opens (/dashboard and its data): a 401 asks it to sign in."""
    key = _key(request)
    if key is not None and not key_matches(request.headers.get("authorization", ""), key):
        raise Unauthorized(BROWSER_MESSAGE, challenge=BASIC_CHALLENGE)

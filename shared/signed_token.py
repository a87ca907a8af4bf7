"""Signed continuation tokens: a JSON state in URL-safe base64, then a dot, then its
HMAC-SHA256 under the holder's key. A caller can read the state but never change it unnoticed:
the signature is checked in constant time before the state is read."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def seal(self, state: Any) -> str:
        payload = _b64(json.dumps(state, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._sign(payload))}"

    def open(self, token: str, max_chars: int) -> Any:
        """The state a token holds, or None when it is too long, malformed or not signed with
        this key."""
        if len(token) > max_chars or not token.isascii() or token.count(".") != 1:
            return None
        payload, signature = token.split(".")
        try:
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                return None
            return json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

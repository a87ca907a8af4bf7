"""Typed errors. Retry decisions are made by exception type, never by parsing messages."""

from __future__ import annotations


class ResponderError(Exception):
    """Base of the responder's own errors."""


class ConfigError(ResponderError):
    """A setting is missing or invalid; the message names the setting."""


class InvalidInput(ResponderError):
    """An alert payload or request cannot be understood; the message says what is wrong."""


class ActionError(ResponderError):
    """An executor could not complete an action."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None):
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class TransientError(ActionError):
    """Worth retrying: throttling, 5xx, timeouts. The queue redelivers the message."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, request_id=request_id)
        self.retry_after = retry_after


class PermanentError(ActionError):
    """Retrying cannot help (403, 404, bad request): audited as failed, not retried."""


class NotFoundError(PermanentError):
    """What the action names does not exist (for Exchange: the cmdlet's exception says so,
    whatever the HTTP status). Callers that can tell "already gone" from a failure use it."""


class MissingPermission(PermanentError):
    """Refused because the app's token lacks an application permission (or the Exchange role
    the operation needs); the message names it. Fixed by a grant, never by a retry."""

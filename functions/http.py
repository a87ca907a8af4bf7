"""HTTP plumbing shared by the HTTP triggers: problem responses (RFC 9457), JSON bodies with a
size limit, and the shared-secret check, compared in constant time."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared.errors import TransientError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from shared.identity import Principal, TokenValidator

KEY_HEADER = "X-Responder-Key"


class HttpProblem(Exception):
    """A request the route refuses; becomes a problem+json response."""

    def __init__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> func.HttpResponse:
        body = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        return func.HttpResponse(
            json.dumps(body),
            status_code=self.status,
            mimetype="application/problem+json",
            headers=self.headers,
        )


def json_response(body: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


def require_key(req: func.HttpRequest, secret: SecretStr | None) -> None:
    """The caller must present the shared secret; an unset secret refuses everyone."""
    presented = req.headers.get(KEY_HEADER, "")
    expected = secret.get_secret_value() if secret else ""
    if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise HttpProblem(401, "Unauthorized", f"a valid {KEY_HEADER} header is required")


def read_json(req: func.HttpRequest, max_bytes: int) -> Any:
    content_type = req.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HttpProblem(415, "Unsupported Media Type", "send the alert as application/json")
    body = req.get_body()
    if len(body) > max_bytes:
        raise HttpProblem(413, "Payload Too Large", f"body is larger than {max_bytes} bytes")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HttpProblem(400, "Bad Request", "body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HttpProblem(
            400, "Bad Request", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise HttpProblem(400, "Bad Request", "JSON nested too deeply") from None
    except ValueError as exc:
        # For example an integer with more digits than Python converts.
        raise HttpProblem(400, "Bad Request", f"unreadable JSON value: {exc}") from None


async def authenticate(
    req: func.HttpRequest, validator: TokenValidator | None, *roles: str
) -> Principal:
    """The caller's identity from its Entra bearer token; it must hold one of `roles`."""
    from shared.identity import AuthError, TokenValidator

    if validator is None:
        raise HttpProblem(503, "Service Unavailable", "sign-in to this API is not configured")
    try:
        principal = await validator.principal(req.headers.get("Authorization"))
        if not principal.roles & set(roles):
            TokenValidator.require(principal, roles[0])
    except AuthError as exc:
        challenge = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        raise HttpProblem(exc.status, _AUTH_TITLES[exc.status], exc.detail, challenge) from None
    except TransientError:
        raise HttpProblem(503, "Service Unavailable", "signing keys unavailable; retry") from None
    return principal


_AUTH_TITLES = {401: "Unauthorized", 403: "Forbidden"}

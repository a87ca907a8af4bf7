"""The auditors' page at GET /api/audit/ui: one self-contained HTML file (inline CSS and JS, no
CDN, no fonts from elsewhere). The page carries no data; it asks the JSON API for everything with
the reader's own bearer token, so serving it needs no sign-in."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import azure.functions as func

PAGE = Path(__file__).resolve().parent / "static" / "audit.html"
# The page may run its own inline script and styles and talk to this origin only; nothing may
# frame it, and nothing it shows is fetched from elsewhere.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'unsafe-inline'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@cache
def page() -> bytes:
    """The page, read once per worker (on first request, not at import)."""
    return PAGE.read_bytes()


@bp.route(route="audit/ui", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def audit_ui(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(page(), mimetype="text/html", charset="utf-8", headers=dict(HEADERS))

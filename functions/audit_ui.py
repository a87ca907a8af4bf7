"""The auditors' page at GET /api/audit/ui: one self-contained HTML file (inline CSS and JS, no
CDN, no fonts from elsewhere). The page carries no data; it asks the JSON API for everything with
the reader's own bearer token, so serving it needs no sign-in."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

import azure.functions as func

PAGE = Path(__file__).resolve().parent / "static" / "audit.html"
# The page may run its own inline script and styles and talk to this origin only; nothing may
# frame it, and nothing it shows is fetched from elsewhere.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self' 'unsafe-inline'",  # replaced by the script's hash when served
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
def page() -> tuple[bytes, dict[str, str]]:
    """The page and its headers, read once per worker (on first request, not at import). The
    policy allows exactly the page's own inline script, by its SHA-256, not inline script in
    general."""
    html = PAGE.read_bytes()
    scripts = re.findall(rb"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in scripts
    )
    policy = CONTENT_SECURITY_POLICY.replace("'unsafe-inline'", hashes, 1)
    return html, {**HEADERS, "Content-Security-Policy": policy}


@bp.route(route="audit/ui", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def audit_ui(req: func.HttpRequest) -> func.HttpResponse:
    html, headers = page()
    return func.HttpResponse(html, mimetype="text/html", charset="utf-8", headers=headers)

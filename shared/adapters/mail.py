"""E-mail notices through Microsoft Graph `sendMail`, from one configured mailbox.

`sendMail` needs Mail.Send. Granted in Entra, that application permission would let the app
send as any mailbox of the tenant (and Exchange scopes cannot narrow an Entra grant: the two
add up). So it is never granted in Entra: Exchange Online's RBAC for Applications gives the
app the role "Application Mail.Send" with a management scope holding only the sender mailbox
(infra/grant-notice-mailbox.ps1; docs/notices.md). Application access policies, the older
way, are not used: Microsoft asks that no new ones be created."""

from __future__ import annotations

from urllib.parse import quote

from azure.core.credentials_async import AsyncTokenCredential

from shared.adapters.rest import BearerJson, require_https

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


class GraphMail:
    """`MailChannel` over `POST /users/{sender}/sendMail`."""

    def __init__(
        self, base_url: str, sender: str, credential: AsyncTokenCredential, timeout_s: float
    ) -> None:
        require_https(base_url, "GRAPH_BASE_URL")
        self._url = f"{base_url.rstrip('/')}/users/{quote(sender, safe='@')}/sendMail"
        self._http = BearerJson(credential, GRAPH_SCOPE, timeout_s)

    async def send(self, recipients: tuple[str, ...], subject: str, html_body: str) -> None:
        """Send one message to `recipients` (Graph answers 202 Accepted; not saved to Sent
        Items). Exchange role: Application Mail.Send, scoped to the sender."""
        message = {
            "subject": subject,
            "body": {"contentType": "HTML", "content": html_body},
            "toRecipients": [{"emailAddress": {"address": r}} for r in recipients],
        }
        await self._http.request(
            "POST", self._url, "sendMail", {"message": message, "saveToSentItems": False}
        )

    async def close(self) -> None:
        await self._http.close()

"""The simulated tenant's token issuer: an RSA signing key published as a JWKS, like Entra's
`/{tenant}/discovery/v2.0/keys`, and v2.0 access tokens signed with it for tests.

It can also mint the forgeries a validator must refuse: `alg: none`, and HS256 keyed with the
public key's PEM (the RS/HS key-confusion attack).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from shared.permissions import EXCHANGE_AUDIENCE, GRAPH_AUDIENCE
from shared.simulator.notices import ARM_AUDIENCE
from shared.simulator.permissions import PermissionDenied
from shared.simulator.state import JsonObject

DEFAULT_UPN = "oncall@contoso.onmicrosoft.com"
# The client app an engineer signs in with (the audit page, say), and the app that calls as
# itself when a test names none.
ENGINEER_CLIENT_ID = "3c8e1f2a-5b7d-4e9f-8a1c-2d4b6f8e0a13"
DEFAULT_APP_ID = "6f1d2c3b-4a59-4e68-9d7c-0b1a2c3d4e5f"
_ID_NAMESPACE = uuid.UUID("6c9f0f0e-8d3e-4f55-9a51-3f3c2d7b9e10")


class _SigningKey:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> JsonObject:
        public = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig"}


class TokenIssuer:
    """The tenant's token signing: one RSA key at a time, made on first use (generating it is
    not free and most tests never need it); `rotate()` replaces it, dropping the old one."""

    def __init__(self, tenant_id: str) -> None:
        self._tenant_id = tenant_id
        self._lock = threading.Lock()
        self._key: _SigningKey | None = None

    @property
    def kid(self) -> str:
        return self._current().kid

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._current().private.public_key()

    def jwks(self) -> JsonObject:
        """The key set, as Entra serves it."""
        return {"keys": [self._current().jwk()]}

    def rotate(self) -> str:
        """Sign with a new key from now on; returns its kid."""
        fresh = _SigningKey()
        with self._lock:
            self._key = fresh
        return fresh.kid

    def issue(
        self,
        *,
        issuer: str,
        audience: str,
        roles: Iterable[str] = (),
        upn: str | None = DEFAULT_UPN,
        app_id: str | None = None,
        expires_in: int = 3600,
        not_before_offset: int = 0,
        kid: str | None = None,
        algorithm: str = "RS256",
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A v2.0 access token: an engineer's (delegated, `scp`) when `upn` is given, else an
        app-only one (`idtyp: app`, `azp` = `app_id`). `extra_claims` are merged last; a None
        value removes that claim."""
        signing = self._current()
        now = int(time.time())
        claims: JsonObject = {
            "aud": audience,
            "iss": issuer,
            # Entra sets iat and nbf to the same instant.
            "iat": now + not_before_offset,
            "nbf": now + not_before_offset,
            "exp": now + expires_in,
            "tid": self._tenant_id,
            "ver": "2.0",
            **_subject(upn, app_id),
        }
        # Entra leaves the claim out when the caller holds no role.
        if role_list := list(roles):
            claims["roles"] = role_list
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        # Signed by hand rather than with jwt.encode, which refuses some of the malformed claims
        # and the HS256 forgery that tests need.
        signing_input = _signing_input(
            {"alg": algorithm, "typ": "JWT", "kid": signing.kid if kid is None else kid}, claims
        ).encode()
        match algorithm:
            case "RS256":
                signature = signing.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
            case "none":
                signature = b""
            case "HS256":
                signature = hmac.new(signing.public_pem, signing_input, hashlib.sha256).digest()
            case _:
                raise ValueError(f"unsupported algorithm {algorithm!r}: use RS256, none or HS256")
        return f"{signing_input.decode()}.{_b64url(signature)}"

    def _current(self) -> _SigningKey:
        with self._lock:
            if self._key is None:
                self._key = _SigningKey()
            return self._key


def _subject(upn: str | None, app_id: str | None) -> JsonObject:
    if upn is not None:
        return {
            "oid": str(uuid.uuid5(_ID_NAMESPACE, f"user:{upn.lower()}")),
            # Entra's sub is pairwise per app, unlike oid.
            "sub": str(uuid.uuid5(_ID_NAMESPACE, f"sub:{upn.lower()}")),
            "azp": app_id or ENGINEER_CLIENT_ID,
            "azpacr": "0",
            "scp": "access_as_user",
            "preferred_username": upn,
            "upn": upn,
            "name": upn.partition("@")[0],
        }
    client = app_id or DEFAULT_APP_ID
    # An app-only token's subject is the client's service principal, so oid and sub agree.
    oid = str(uuid.uuid5(_ID_NAMESPACE, f"app:{client.lower()}"))
    return {"oid": oid, "sub": oid, "azp": client, "azpacr": "1", "idtyp": "app"}


def _signing_input(header: JsonObject, claims: JsonObject) -> str:
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


EXCHANGE_ADMINISTRATOR = "29232cdf-9323-42fd-ade2-1d097af3e4de"
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
TRANSPORT_RULES_ROLE = "Transport Rules"
# Exchange permissions live on the Exchange resource; every other grant is a Graph one.
EXCHANGE_PERMISSIONS = frozenset({"Exchange.ManageAsApp"})
TOKEN_LIFETIME_S = 3599


class TokenError(Exception):
    """A refused token request, answered as the identity platform does (RFC 6749 errors)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> JsonObject:
        return {"error": self.error, "error_description": self.description}


class AppIdentity:
    """The responder's own identity in the simulated tenant: its client secret, the
    application permissions granted to it (app role assignments), its Exchange management
    roles, and the access tokens the identity platform issues for it.

    A token carries the grants of its audience as `roles` and the app's directory roles as
    `wids`, like Entra's app-only tokens, fixed when it is issued: a grant removed later takes
    effect with the next token. The client secret is also accepted as a bearer token, standing
    for a fresh token of the audience called; test helpers that speak raw HTTP use it, the
    product never does (its simulator credential asks the token endpoint).
    """

    def __init__(
        self,
        secret: str,
        issuer: TokenIssuer,
        issuer_url: Callable[[], str],
        directory_roles: Callable[[], frozenset[str]],
        grants: Iterable[str],
        app_id: str = DEFAULT_APP_ID,
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._issuer_url = issuer_url
        self._directory_roles = directory_roles
        self.app_id = app_id
        self._lock = threading.Lock()
        self._grants = set(grants)
        self._exchange_roles = {TRANSPORT_RULES_ROLE}

    # What the tenant has granted

    def grants(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._grants)

    def set_grants(self, names: Iterable[str]) -> None:
        with self._lock:
            self._grants = set(names)

    def set_exchange_roles(self, names: Iterable[str]) -> None:
        with self._lock:
            self._exchange_roles = set(names)

    def exchange_roles(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._exchange_roles)

    def granted_on(self, audience: str) -> list[str]:
        on_exchange = audience.rstrip("/") == EXCHANGE_AUDIENCE
        return sorted(g for g in self.grants() if (g in EXCHANGE_PERMISSIONS) == on_exchange)

    # Tokens

    def mint(self, audience: str) -> str:
        """An app-only access token for `audience` with the grants held now."""
        return self._issuer.issue(
            issuer=self._issuer_url(),
            audience=audience,
            roles=self.granted_on(audience),
            upn=None,
            app_id=self.app_id,
            expires_in=TOKEN_LIFETIME_S,
            extra_claims={"wids": sorted(self._directory_roles()) or None},
        )

    def token_response(self, form: Mapping[str, str]) -> JsonObject:
        """The client credentials grant: `scope` is `{audience}/.default`."""
        if form.get("grant_type") != "client_credentials":
            raise TokenError(
                400,
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type.",
            )
        presented = form.get("client_secret", "")
        if not hmac.compare_digest(presented.encode(), self._secret.encode()):
            raise TokenError(
                401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
            )
        scope = form.get("scope", "")
        audience = scope.removesuffix("/.default")
        if audience == scope or audience not in (GRAPH_AUDIENCE, EXCHANGE_AUDIENCE, ARM_AUDIENCE):
            raise TokenError(
                400,
                "invalid_scope",
                f"AADSTS1002012: The provided value for scope {scope} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier.",
            )
        return {
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
            "ext_expires_in": TOKEN_LIFETIME_S,
            "access_token": self.mint(audience),
        }

    def roles_of(self, bearer: str, audience: str) -> frozenset[str] | None:
        """The `roles` of a valid token for `audience`; None for anything else."""
        if hmac.compare_digest(bearer.encode(), self._secret.encode()):
            return frozenset(self.granted_on(audience))
        try:
            claims = jwt.decode(
                bearer,
                key=self._issuer.public_key,
                algorithms=["RS256"],
                audience=audience,
                issuer=self._issuer_url(),
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        roles = claims.get("roles", [])
        return (
            frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else None
        )

    # Exchange authorization

    def admit_cmdlet(self, roles: frozenset[str], cmdlet: str | None) -> None:
        """Exchange's admin endpoint serves an app only with `Exchange.ManageAsApp` in its
        token, and runs a cmdlet only if one of the app's Exchange roles covers it."""
        if "Exchange.ManageAsApp" not in roles:
            raise PermissionDenied(401, "Unauthorized", "Access is denied.")
        if cmdlet is None or not cmdlet.endswith("-TransportRule"):
            return
        directory = self._directory_roles()
        if TRANSPORT_RULES_ROLE in self.exchange_roles() or directory & {
            EXCHANGE_ADMINISTRATOR,
            GLOBAL_ADMINISTRATOR,
        }:
            return
        raise PermissionDenied(401, "Unauthorized", f"User is not allowed to call {cmdlet}")

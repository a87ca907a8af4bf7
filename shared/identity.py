"""Who is calling the HTTP API: Microsoft Entra ID v2.0 access tokens checked against the
tenant's signing keys, and the app roles that gate each route."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt

from shared.models import Actor

logger = logging.getLogger(__name__)

ROLE_ACT = "Responder.Act"
ROLE_APPROVE = "Responder.Approve"
ROLE_AUDIT_READ = "Audit.Read"

# Entra signs access tokens with RS256; accepting anything else invites algorithm confusion
# (RFC 8725 section 2.1), so the list is fixed here and never taken from the token.
ALGORITHM = "RS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "oid")
# Entra access tokens stay well under this even with many group claims; the cap keeps a
# pathological header from being base64-decoded and parsed.
MAX_TOKEN_CHARS = 16_384
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

PrincipalKind = Literal["engineer", "app"]


@dataclass(frozen=True)
class Principal:
    """The verified caller: an engineer signed in to a client app, or an app acting as itself."""

    name: str
    object_id: str
    kind: PrincipalKind
    roles: frozenset[str]
    # The `tid` claim: the tenant that issued the token (every Entra access token carries it).
    tenant_id: str | None = None

    def actor(self) -> Actor:
        """The caller as the audit trail and four eyes know it: its name, object id and
        tenant id."""
        return Actor(
            kind=self.kind, name=self.name, object_id=self.object_id, tenant_id=self.tenant_id
        )


class AuthError(Exception):
    """A refused caller: 401 for a missing or invalid token, 403 for a missing role.

    `detail` is safe to show the caller: it names the problem, never the token or key material.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class SigningKeys(Protocol):
    """The issuer's published token signing keys, by key id."""

    async def key(self, kid: str) -> Any:
        """A public key `jwt.decode` accepts; AuthError(401) for an unknown kid, TransientError
        when the keys cannot be fetched."""
        ...


class TokenValidator:
    """Turns an `Authorization` header into a `Principal`, or refuses it with `AuthError`."""

    def __init__(self, keys: SigningKeys, issuer: str, audience: str, leeway_s: int = 60) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s

    async def principal(self, authorization: str | None) -> Principal:
        """The caller behind `Authorization: Bearer <token>`.

        AuthError(401) for any problem with the token; TransientError (from the signing keys)
        when they cannot be fetched, which callers answer with 503.
        """
        try:
            token = _bearer_token(authorization)
            kid = _signing_key_id(token)
            claims = self._verified_claims(token, await self._keys.key(kid))
            return _principal(claims)
        except AuthError as refused:
            logger.info("Refused a bearer token: %s", refused.detail)
            raise

    @staticmethod
    def require(principal: Principal, role: str) -> None:
        """AuthError(403) unless `principal` holds the app role `role`."""
        if role not in principal.roles:
            logger.info("Principal %s lacks the %s role", principal.object_id, role)
            raise AuthError(403, f"the {role} role is required")

    def _verified_claims(self, token: str, key: Any) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    # Entra puts exactly one audience in an access token.
                    "strict_aud": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(401, "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, "the token was issued for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "the token was issued by an untrusted issuer") from None
        except jwt.MissingRequiredClaimError as missing:
            # The claim name comes from REQUIRED_CLAIMS (or PyJWT's own aud/iss checks).
            raise AuthError(401, f"the token lacks the {missing.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "the token signature is invalid") from None
        except jwt.PyJWTError:
            raise AuthError(401, "the token is invalid") from None


def _bearer_token(authorization: str | None) -> str:
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if not scheme:
        raise AuthError(401, "a bearer token is required")
    if scheme.lower() != "bearer":
        raise AuthError(401, "the Authorization header must use the Bearer scheme")
    token = credential.strip()
    if not token:
        raise AuthError(401, "a bearer token is required")
    if len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(token):
        raise AuthError(401, "the bearer token is not a well-formed JWT")
    return token


def _signing_key_id(token: str) -> str:
    """The header's kid, once the header names the one algorithm accepted, so that no key is
    looked up (and no JWKS fetched) for a token that could never verify."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError(401, "the bearer token is not a well-formed JWT") from None
    if header.get("alg") != ALGORITHM:
        raise AuthError(401, f"the token must be signed with {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthError(401, "the token does not name its signing key")
    return kid


def _principal(claims: Mapping[str, Any]) -> Principal:
    object_id = claims["oid"]
    if not isinstance(object_id, str) or not object_id:
        raise AuthError(401, "the token's oid claim is malformed")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise AuthError(401, "the token's roles claim is malformed")
    kind = _kind(claims)
    if kind == "app":
        name = _first_string(claims, "azp", "appid")
        if name is None:
            raise AuthError(401, "the token does not name its client application")
    else:
        # `upn` is the directory's userPrincipalName; `preferred_username` (v2.0 default) is
        # usually the same but may be an email address or phone number.
        name = _first_string(claims, "upn", "preferred_username")
        if name is None:
            raise AuthError(401, "the token carries no user name (upn or preferred_username)")
    tenant_id = claims.get("tid")
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise AuthError(401, "the token's tid claim is malformed")
    return Principal(
        name=name, object_id=object_id, kind=kind, roles=frozenset(roles), tenant_id=tenant_id
    )


def _kind(claims: Mapping[str, Any]) -> PrincipalKind:
    """`idtyp` says it best, but it is only emitted when the API's registration asks for it;
    without it, a token with a user's scopes or name is a user's, and only app-only tokens
    carry neither."""
    match claims.get("idtyp"):
        case "app":
            return "app"
        case "user":
            return "engineer"
        case None:
            user_claims = ("scp", "upn", "preferred_username")
            return "engineer" if any(name in claims for name in user_claims) else "app"
    raise AuthError(401, "the token type (idtyp) is not supported")


def _first_string(claims: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None

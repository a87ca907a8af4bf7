"""Bearer token validation without HTTP: the simulated tenant's token issuer signs, and an
in-memory key set that records its lookups stands in for the JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.identity import (
    MAX_TOKEN_CHARS,
    ROLE_ACT,
    ROLE_APPROVE,
    ROLE_AUDIT_READ,
    AuthError,
    Principal,
    TokenValidator,
)
from shared.simulator.identity import DEFAULT_UPN, TokenIssuer

TENANT = "00000000-0000-0000-0000-0000000000aa"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
AUDIENCE = "api://m365-responder"
CLIENT_APP = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
# One key pair for the module: RSA generation is the slow part, and no test changes the key.
MINT = TokenIssuer(TENANT)


class InMemoryKeys:
    """`SigningKeys` over a dict; remembers every kid asked for."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = keys
        self.asked: list[str] = []

    async def key(self, kid: str) -> Any:
        self.asked.append(kid)
        try:
            return self._keys[kid]
        except KeyError:
            raise AuthError(401, "unknown signing key") from None


@pytest.fixture
def keys() -> InMemoryKeys:
    return InMemoryKeys({MINT.kid: MINT.public_key})


@pytest.fixture
def validator(keys: InMemoryKeys) -> TokenValidator:
    return TokenValidator(keys, ISSUER, AUDIENCE)


def bearer(**overrides: Any) -> str:
    arguments: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **overrides}
    return f"Bearer {MINT.issue(**arguments)}"


async def refusal(validator: TokenValidator, authorization: str | None) -> AuthError:
    with pytest.raises(AuthError) as refused:
        await validator.principal(authorization)
    return refused.value


# Accepted tokens ---------------------------------------------------------------------------------


async def test_an_engineer_token_yields_the_upn_the_object_id_and_the_roles(
    validator: TokenValidator,
) -> None:
    principal = await validator.principal(bearer(roles=[ROLE_ACT, ROLE_AUDIT_READ]))

    assert principal.kind == "engineer"
    assert principal.name == DEFAULT_UPN
    assert principal.roles == frozenset({ROLE_ACT, ROLE_AUDIT_READ})
    assert principal.object_id and principal.object_id != principal.name


async def test_an_app_token_yields_the_client_app_id_as_the_name(
    validator: TokenValidator,
) -> None:
    principal = await validator.principal(bearer(upn=None, app_id=CLIENT_APP, roles=[ROLE_ACT]))

    assert principal.kind == "app"
    assert principal.name == CLIENT_APP
    assert principal.roles == frozenset({ROLE_ACT})


async def test_the_scheme_is_case_insensitive_and_surrounding_space_is_ignored(
    validator: TokenValidator,
) -> None:
    token = bearer().removeprefix("Bearer ")
    principal = await validator.principal(f"  bEaReR   {token}  ")
    assert principal.name == DEFAULT_UPN


async def test_a_token_without_roles_gives_a_principal_without_roles(
    validator: TokenValidator,
) -> None:
    assert (await validator.principal(bearer())).roles == frozenset()


async def test_without_idtyp_a_token_without_user_claims_is_an_app(
    validator: TokenValidator,
) -> None:
    app_token = bearer(upn=None, app_id=CLIENT_APP, extra_claims={"idtyp": None})
    user_token = bearer(extra_claims={"scp": None, "upn": None})

    assert (await validator.principal(app_token)).kind == "app"
    user = await validator.principal(user_token)
    assert (user.kind, user.name) == ("engineer", DEFAULT_UPN)


async def test_the_upn_is_preferred_to_preferred_username(validator: TokenValidator) -> None:
    token = bearer(extra_claims={"preferred_username": "adele@contoso.com"})
    assert (await validator.principal(token)).name == DEFAULT_UPN


async def test_the_actor_carries_the_object_id_and_tenant_beside_the_name(
    validator: TokenValidator,
) -> None:
    principal = await validator.principal(bearer())
    actor = principal.actor()
    assert (actor.kind, actor.name) == ("engineer", DEFAULT_UPN)
    assert (actor.object_id, actor.tenant_id) == (principal.object_id, TENANT)


async def test_a_malformed_tenant_claim_is_refused(validator: TokenValidator) -> None:
    refused = await refusal(validator, bearer(extra_claims={"tid": 7}))
    assert (refused.status, refused.detail) == (401, "the token's tid claim is malformed")


# Refused tokens ----------------------------------------------------------------------------------


def forged_hs256_with_the_public_key() -> str:
    return bearer(algorithm="HS256")


WRONG_SCHEME = "the Authorization header must use the Bearer scheme"
MALFORMED = "the bearer token is not a well-formed JWT"
OTHER_AUDIENCE = "the token was issued for another audience"
ONLY_RS256 = "the token must be signed with RS256"
BAD_ROLES = "the token's roles claim is malformed"
BAD_IDTYP = "the token type (idtyp) is not supported"
NO_CLIENT = "the token does not name its client application"
NO_NAME = "the token carries no user name (upn or preferred_username)"
NO_KID = "the token does not name its signing key"


def signed_with_header(header: dict[str, Any]) -> str:
    """A real token with its header replaced by `header`. The header is judged before any key
    is looked up, so the signature no longer matching does not matter."""
    _, payload, signature = MINT.issue(issuer=ISSUER, audience=AUDIENCE).split(".")
    return f"Bearer {_b64(header)}.{payload}.{signature}"


# Headers are made when the test runs, not at collection: a token that is "not valid yet" at
# import would be valid by the time a slow suite reaches it.
REFUSALS: list[tuple[str, Callable[[], str | None], str]] = [
    ("no header", lambda: None, "a bearer token is required"),
    ("empty header", lambda: "", "a bearer token is required"),
    ("scheme only", lambda: "Bearer", "a bearer token is required"),
    ("basic auth", lambda: "Basic b25jYWxsOnNlY3JldA==", WRONG_SCHEME),
    ("bare token", lambda: MINT.issue(issuer=ISSUER, audience=AUDIENCE), WRONG_SCHEME),
    ("garbage", lambda: "Bearer not-a-jwt", MALFORMED),
    ("two parts", lambda: "Bearer abc.def", MALFORMED),
    ("undecodable header", lambda: "Bearer e30x.e30.c2ln", MALFORMED),
    ("expired", lambda: bearer(expires_in=-120), "the token has expired"),
    ("not yet valid", lambda: bearer(not_before_offset=300), "the token is not valid yet"),
    ("wrong audience", lambda: bearer(audience="api://someone-else"), OTHER_AUDIENCE),
    (
        "wrong issuer",
        lambda: bearer(issuer="https://login.microsoftonline.com/evil/v2.0"),
        "the token was issued by an untrusted issuer",
    ),
    ("alg none", lambda: bearer(algorithm="none"), ONLY_RS256),
    ("HS256 keyed with the public key", forged_hs256_with_the_public_key, ONLY_RS256),
    ("unknown kid", lambda: bearer(kid="kid-nobody-published"), "unknown signing key"),
    ("no kid", lambda: signed_with_header({"alg": "RS256", "typ": "JWT"}), NO_KID),
    ("empty kid", lambda: signed_with_header({"alg": "RS256", "kid": ""}), NO_KID),
    ("kid not a string", lambda: signed_with_header({"alg": "RS256", "kid": 7}), MALFORMED),
    ("scheme and spaces only", lambda: "Bearer    ", "a bearer token is required"),
    ("a space before the token only", lambda: "Bearer  \t", "a bearer token is required"),
    ("missing oid", lambda: bearer(extra_claims={"oid": None}), "the token lacks the oid claim"),
    ("missing exp", lambda: bearer(extra_claims={"exp": None}), "the token lacks the exp claim"),
    ("missing iat", lambda: bearer(extra_claims={"iat": None}), "the token lacks the iat claim"),
    ("roles not a list", lambda: bearer(extra_claims={"roles": ROLE_ACT}), BAD_ROLES),
    (
        "two audiences",
        lambda: bearer(extra_claims={"aud": [AUDIENCE, "api://other"]}),
        OTHER_AUDIENCE,
    ),
    ("device token", lambda: bearer(extra_claims={"idtyp": "device"}), BAD_IDTYP),
    ("app without client id", lambda: bearer(upn=None, extra_claims={"azp": None}), NO_CLIENT),
    (
        "user without a name",
        lambda: bearer(extra_claims={"upn": None, "preferred_username": None}),
        NO_NAME,
    ),
]


@pytest.mark.parametrize(
    ("make_header", "expected"),
    [(header, expected) for _, header, expected in REFUSALS],
    ids=[case for case, _, _ in REFUSALS],
)
async def test_bad_tokens_are_refused_with_401_and_a_detail_that_leaks_nothing(
    validator: TokenValidator, make_header: Callable[[], str | None], expected: str
) -> None:
    authorization = make_header()
    refused = await refusal(validator, authorization)

    assert refused.status == 401
    assert refused.detail == expected
    credential = (authorization or "").partition(" ")[2]
    for part in credential.split("."):
        assert len(part) < 8 or part not in refused.detail
    assert ISSUER not in refused.detail and AUDIENCE not in refused.detail
    assert "BEGIN PUBLIC KEY" not in refused.detail


async def test_a_tampered_payload_fails_the_signature(validator: TokenValidator) -> None:
    header, _, signature = bearer(roles=[ROLE_ACT]).removeprefix("Bearer ").split(".")
    token = MINT.issue(issuer=ISSUER, audience=AUDIENCE, roles=[ROLE_ACT, ROLE_APPROVE])
    forged_payload = token.split(".")[1]

    refused = await refusal(validator, f"Bearer {header}.{forged_payload}.{signature}")

    assert (refused.status, refused.detail) == (401, "the token signature is invalid")


async def test_other_algorithms_are_refused_before_any_key_is_looked_up(
    validator: TokenValidator, keys: InMemoryKeys
) -> None:
    await refusal(validator, bearer(algorithm="none"))
    await refusal(validator, forged_hs256_with_the_public_key())
    assert keys.asked == []


def test_the_hs256_forgery_is_the_real_key_confusion_attack() -> None:
    """The forged token carries a valid HMAC keyed with the public PEM, so a validator that
    let the token pick its algorithm would accept it."""
    token = forged_hs256_with_the_public_key().removeprefix("Bearer ")
    signing_input, _, signature = token.rpartition(".")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    pem = MINT.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()

    assert header["alg"] == "HS256" and header["kid"] == MINT.kid
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected


async def test_an_unknown_kid_is_looked_up_and_refused(
    validator: TokenValidator, keys: InMemoryKeys
) -> None:
    await refusal(validator, bearer(kid="rotated-away"))
    assert keys.asked == ["rotated-away"]


# Clock skew --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [{"expires_in": -20}, {"not_before_offset": 20}],
    ids=["expired 20 s ago", "valid in 20 s"],
)
async def test_a_few_seconds_of_clock_skew_are_tolerated(
    validator: TokenValidator, claims: dict[str, int]
) -> None:
    assert (await validator.principal(bearer(**claims))).name == DEFAULT_UPN


async def test_skew_beyond_the_leeway_is_not(keys: InMemoryKeys) -> None:
    strict = TokenValidator(keys, ISSUER, AUDIENCE, leeway_s=5)

    assert (await refusal(strict, bearer(expires_in=-20))).detail == "the token has expired"
    assert (await refusal(strict, bearer(not_before_offset=20))).detail == (
        "the token is not valid yet"
    )


# Roles -------------------------------------------------------------------------------------------


def engineer(*roles: str) -> Principal:
    return Principal(
        DEFAULT_UPN, "97710b5d-2a58-5536-a2d8-1f88c6cd1103", "engineer", frozenset(roles)
    )


def test_require_refuses_a_missing_role_with_403() -> None:
    with pytest.raises(AuthError) as refused:
        TokenValidator.require(engineer(ROLE_AUDIT_READ), ROLE_APPROVE)

    assert refused.value.status == 403
    assert refused.value.detail == "the Responder.Approve role is required"


def test_require_passes_a_held_role() -> None:
    TokenValidator.require(engineer(ROLE_ACT, ROLE_APPROVE), ROLE_APPROVE)


# Anything at all ---------------------------------------------------------------------------------


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_headers = st.one_of(
    _json,
    st.fixed_dictionaries(
        {
            "alg": st.sampled_from(["RS256", "none", "HS256", "", "rs256"]),
            "kid": st.one_of(st.just(MINT.kid), _json),
        }
    ),
)
_claims = st.one_of(
    _json,
    st.fixed_dictionaries(
        {
            "iss": st.one_of(st.just(ISSUER), _json),
            "aud": st.one_of(st.just(AUDIENCE), _json),
            "exp": st.one_of(st.integers(), _json),
            "iat": st.one_of(st.integers(), _json),
            "oid": _json,
            "roles": _json,
        }
    ),
)
_segment = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=40
)
_jwt_looking = st.tuples(
    st.one_of(_headers.map(_b64), _segment),
    st.one_of(_claims.map(_b64), _segment),
    st.one_of(st.binary(max_size=64).map(_b64), _segment),
).map(".".join)
_authorizations = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.text(max_size=200).map(lambda text: f"Bearer {text}"),
    _jwt_looking.map(lambda token: f"Bearer {token}"),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(authorization=_authorizations)
async def test_any_authorization_header_is_refused_with_auth_error_only(
    authorization: str | None,
) -> None:
    validator = TokenValidator(InMemoryKeys({MINT.kid: MINT.public_key}), ISSUER, AUDIENCE)
    with pytest.raises(AuthError) as refused:
        await validator.principal(authorization)
    assert refused.value.status == 401
    event(refused.value.detail)


_signed_claims = st.dictionaries(
    st.sampled_from(
        ["oid", "roles", "idtyp", "upn", "preferred_username", "azp", "scp", "exp", "iat", "nbf"]
        + ["aud", "iss", "sub", "jti"]
    ),
    _json,
    max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra_claims=_signed_claims)
async def test_odd_claims_in_a_validly_signed_token_give_a_principal_or_auth_error(
    extra_claims: dict[str, Any],
) -> None:
    validator = TokenValidator(InMemoryKeys({MINT.kid: MINT.public_key}), ISSUER, AUDIENCE)
    try:
        principal = await validator.principal(bearer(extra_claims=extra_claims))
    except AuthError as refused:
        assert refused.status == 401
        event(refused.detail)
    else:
        assert principal.name and principal.object_id
        event(f"accepted as {principal.kind}")


# Who is an engineer (approvals and privileged actions depend on it) ----------------------------


async def test_idtyp_user_makes_an_engineer_even_without_scopes(
    validator: TokenValidator,
) -> None:
    token = bearer(extra_claims={"idtyp": "user", "scp": None})
    principal = await validator.principal(token)
    assert (principal.kind, principal.name) == ("engineer", DEFAULT_UPN)


async def test_idtyp_app_makes_an_app_even_with_a_user_name(validator: TokenValidator) -> None:
    token = bearer(app_id=CLIENT_APP, extra_claims={"idtyp": "app"})
    principal = await validator.principal(token)
    assert (principal.kind, principal.name) == ("app", CLIENT_APP)


async def test_an_unknown_idtyp_is_refused(validator: TokenValidator) -> None:
    refused = await refusal(validator, bearer(extra_claims={"idtyp": "device"}))
    assert (refused.status, refused.detail) == (401, "the token type (idtyp) is not supported")


@pytest.mark.parametrize("kept", ["upn", "preferred_username"])
async def test_without_idtyp_a_user_name_claim_alone_makes_an_engineer(
    validator: TokenValidator, kept: str
) -> None:
    removed = {"scp": None, "upn": None, "preferred_username": None}
    principal = await validator.principal(bearer(extra_claims={**removed, kept: DEFAULT_UPN}))
    assert (principal.kind, principal.name) == ("engineer", DEFAULT_UPN)


async def test_without_idtyp_scopes_alone_make_an_engineer_who_must_have_a_name(
    validator: TokenValidator,
) -> None:
    token = bearer(extra_claims={"upn": None, "preferred_username": None})
    refused = await refusal(validator, token)
    assert refused.detail == "the token carries no user name (upn or preferred_username)"


@pytest.mark.parametrize("odd", [123, "", True, ["x"]])
async def test_a_name_claim_that_is_not_a_non_empty_string_is_passed_over(
    validator: TokenValidator, odd: object
) -> None:
    token = bearer(extra_claims={"upn": odd, "preferred_username": "adele@contoso.com"})
    assert (await validator.principal(token)).name == "adele@contoso.com"


@pytest.mark.parametrize("oid", ["", 123])
async def test_an_object_id_that_is_not_a_non_empty_string_is_refused(
    validator: TokenValidator, oid: object
) -> None:
    refused = await refusal(validator, bearer(extra_claims={"oid": oid}))
    assert (refused.status, refused.detail) == (401, "the token's oid claim is malformed")


async def test_a_roles_claim_that_is_not_a_list_of_strings_is_refused(
    validator: TokenValidator,
) -> None:
    refused = await refusal(validator, bearer(extra_claims={"roles": "Responder.Act"}))
    assert (refused.status, refused.detail) == (401, "the token's roles claim is malformed")


async def test_an_app_named_only_by_appid_is_named_so(validator: TokenValidator) -> None:
    token = bearer(upn=None, app_id=CLIENT_APP, extra_claims={"azp": None, "appid": "v1-app"})
    assert (await validator.principal(token)).name == "v1-app"


async def test_an_app_token_naming_no_client_is_refused(validator: TokenValidator) -> None:
    refused = await refusal(validator, bearer(upn=None, extra_claims={"azp": None}))
    assert (refused.status, refused.detail) == (
        401,
        "the token does not name its client application",
    )


# Key strength, size cap and what is logged --------------------------------------------------------


async def test_a_token_signed_with_a_weak_key_is_refused_even_if_the_key_is_published() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    claims = {"aud": AUDIENCE, "iss": ISSUER, "iat": int(time.time()), "oid": "o", "upn": "u@x"}
    claims["exp"] = claims["iat"] + 600
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the short key while signing it
        token = jwt.encode(claims, weak, algorithm="RS256", headers={"kid": "weak"})
    validator = TokenValidator(InMemoryKeys({"weak": weak.public_key()}), ISSUER, AUDIENCE)
    refused = await refusal(validator, f"Bearer {token}")
    assert (refused.status, refused.detail) == (401, "the token is invalid")


def padded_to(length: int) -> str:
    """A valid token exactly `length` characters long (a filler claim makes up the rest)."""

    def token(filler: int) -> str:
        return MINT.issue(issuer=ISSUER, audience=AUDIENCE, extra_claims={"x": "f" * filler})

    # each filler character adds 4/3 of a character to the base64url payload
    estimate = (length - len(token(0))) * 3 // 4
    for filler in range(max(0, estimate - 4), estimate + 4):
        if len(candidate := token(filler)) == length:
            return candidate
    raise AssertionError(f"no token of {length} characters")


async def test_a_token_up_to_the_size_cap_is_read_and_a_longer_one_is_not(
    validator: TokenValidator, keys: InMemoryKeys
) -> None:
    at_cap = padded_to(MAX_TOKEN_CHARS)
    assert (await validator.principal(f"Bearer {at_cap}")).name == DEFAULT_UPN
    asked = len(keys.asked)
    over = padded_to(MAX_TOKEN_CHARS + 1)
    refused = await refusal(validator, f"Bearer {over}")
    assert refused.detail == "the bearer token is not a well-formed JWT"
    assert len(keys.asked) == asked  # refused before any key was looked up


async def test_a_refused_token_is_logged_with_the_reason_only(
    validator: TokenValidator, caplog: pytest.LogCaptureFixture
) -> None:
    header = bearer(expires_in=-600)
    with caplog.at_level(logging.INFO, logger="shared.identity"):
        await refusal(validator, header)
    assert [r.getMessage() for r in caplog.records] == [
        "Refused a bearer token: the token has expired"
    ]
    assert header.split(".")[1] not in caplog.text


def test_a_missing_role_is_logged_with_the_caller_and_the_role(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="shared.identity"), pytest.raises(AuthError):
        TokenValidator.require(engineer(ROLE_ACT), ROLE_AUDIT_READ)
    assert [r.getMessage() for r in caplog.records] == [
        "Principal 97710b5d-2a58-5536-a2d8-1f88c6cd1103 lacks the Audit.Read role"
    ]


async def test_the_leeway_is_at_most_a_minute(validator: TokenValidator) -> None:
    # expired exactly 60 s before it was issued: past the leeway however fast the check runs
    refused = await refusal(validator, bearer(expires_in=-60))
    assert refused.detail == "the token has expired"


def test_a_refusal_reads_as_its_detail_in_tracebacks_and_logs() -> None:
    refused = AuthError(403, "the Audit.Read role is required")
    assert str(refused) == "the Audit.Read role is required"
    assert (refused.status, refused.detail) == (403, "the Audit.Read role is required")

"""The JWKS adapter over real HTTP against the simulated tenant: fetching and caching the signing
keys, end-to-end token validation, refresh on an unknown kid and its rate limit, and outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.adapters.jwks import JwksKeys, signing_keys
from shared.errors import TransientError
from shared.identity import ROLE_ACT, AuthError, TokenValidator
from shared.simulator import Fault, SimulatedTenant

pytestmark = pytest.mark.integration

AUDIENCE = "api://m365-responder"
KEYS_PATH = "/discovery/v2.0/keys"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def keys(sim: SimulatedTenant, clock: FakeClock) -> AsyncIterator[JwksKeys]:
    adapter = JwksKeys(sim.jwks_url, timeout_s=5.0, min_refresh_s=300.0, clock=clock)
    try:
        yield adapter
    finally:
        await adapter.close()


def key_fetches(sim: SimulatedTenant) -> int:
    return sum(1 for method, path in sim.requests if method == "GET" and path.endswith(KEYS_PATH))


# Fetching and caching ----------------------------------------------------------------------------


async def test_the_key_set_is_served_without_a_bearer_token_and_fetched_once(
    sim: SimulatedTenant, keys: JwksKeys
) -> None:
    first = await keys.key(sim.signing_kid)
    again = await keys.key(sim.signing_kid)

    assert first is again
    assert sim.requests == [("GET", f"/{sim.tenant_id}{KEYS_PATH}")]


async def test_concurrent_first_requests_share_one_fetch(
    sim: SimulatedTenant, keys: JwksKeys
) -> None:
    found = await asyncio.gather(*(keys.key(sim.signing_kid) for _ in range(20)))

    assert len({id(key) for key in found}) == 1
    assert key_fetches(sim) == 1


async def test_a_token_issued_by_the_simulator_is_validated_end_to_end(
    sim: SimulatedTenant, keys: JwksKeys
) -> None:
    validator = TokenValidator(keys, sim.issuer, AUDIENCE)

    engineer = await validator.principal(
        f"Bearer {sim.issue_token(audience=AUDIENCE, roles=[ROLE_ACT])}"
    )
    app = await validator.principal(
        f"Bearer {sim.issue_token(audience=AUDIENCE, upn=None, app_id='a1b2c3d4')}"
    )

    assert (engineer.kind, engineer.name, engineer.roles) == (
        "engineer",
        "oncall@contoso.onmicrosoft.com",
        frozenset({ROLE_ACT}),
    )
    assert (app.kind, app.name) == ("app", "a1b2c3d4")
    assert key_fetches(sim) == 1


async def test_forged_algorithms_never_reach_the_key_endpoint(
    sim: SimulatedTenant, keys: JwksKeys
) -> None:
    validator = TokenValidator(keys, sim.issuer, AUDIENCE)
    for algorithm in ("none", "HS256"):
        with pytest.raises(AuthError):
            await validator.principal(
                f"Bearer {sim.issue_token(audience=AUDIENCE, algorithm=algorithm)}"
            )
    assert key_fetches(sim) == 0


# Refreshing --------------------------------------------------------------------------------------


async def test_a_rotated_key_is_fetched_once_the_refresh_interval_allows(
    sim: SimulatedTenant, keys: JwksKeys, clock: FakeClock
) -> None:
    validator = TokenValidator(keys, sim.issuer, AUDIENCE)
    old_kid = sim.signing_kid
    await validator.principal(f"Bearer {sim.issue_token(audience=AUDIENCE)}")

    new_kid = sim.rotate_signing_key()
    clock.now += 300
    principal = await validator.principal(f"Bearer {sim.issue_token(audience=AUDIENCE)}")

    assert new_kid != old_kid
    assert principal.name == "oncall@contoso.onmicrosoft.com"
    assert key_fetches(sim) == 2
    with pytest.raises(AuthError) as refused:
        await keys.key(old_kid)
    assert (refused.value.status, refused.value.detail) == (401, "unknown signing key")


async def test_a_flood_of_unknown_kids_refreshes_at_most_once_per_interval(
    sim: SimulatedTenant, keys: JwksKeys, clock: FakeClock
) -> None:
    await keys.key(sim.signing_kid)
    clock.now += 300

    for attempt in range(50):
        with pytest.raises(AuthError):
            await keys.key(f"forged-{attempt}")
    assert key_fetches(sim) == 2

    clock.now += 299
    results = await asyncio.gather(
        *(keys.key(f"forged-again-{n}") for n in range(50)), return_exceptions=True
    )
    assert all(isinstance(result, AuthError) and result.status == 401 for result in results)
    assert key_fetches(sim) == 2


async def test_a_rotation_inside_the_interval_is_picked_up_when_it_ends(
    sim: SimulatedTenant, keys: JwksKeys, clock: FakeClock
) -> None:
    await keys.key(sim.signing_kid)
    new_kid = sim.rotate_signing_key()

    with pytest.raises(AuthError):
        await keys.key(new_kid)
    clock.now += 300

    assert await keys.key(new_kid) is not None
    assert key_fetches(sim) == 2


async def test_a_key_set_older_than_max_age_is_fetched_again(
    sim: SimulatedTenant, clock: FakeClock
) -> None:
    keys = JwksKeys(sim.jwks_url, min_refresh_s=300.0, max_age_s=3600.0, clock=clock)
    try:
        old_kid = sim.signing_kid
        await keys.key(old_kid)
        sim.rotate_signing_key()
        clock.now += 3600

        with pytest.raises(AuthError):
            await keys.key(old_kid)
        assert key_fetches(sim) == 2
    finally:
        await keys.close()


# Outages -----------------------------------------------------------------------------------------


async def test_the_endpoint_being_down_is_a_transient_error(
    sim: SimulatedTenant, keys: JwksKeys
) -> None:
    sim.add_fault(Fault(method="GET", path_pattern=KEYS_PATH, status=503, times=None))

    with pytest.raises(TransientError) as failed:
        await keys.key(sim.signing_kid)

    assert failed.value.status == 503
    sim.clear_faults()
    assert await keys.key(sim.signing_kid) is not None


async def test_a_token_meets_a_transient_error_not_a_401_while_keys_are_unavailable(
    sim: SimulatedTenant, keys: JwksKeys
) -> None:
    sim.add_fault(Fault(method="GET", path_pattern=KEYS_PATH, status=503, times=None))
    validator = TokenValidator(keys, sim.issuer, AUDIENCE)

    with pytest.raises(TransientError):
        await validator.principal(f"Bearer {sim.issue_token(audience=AUDIENCE)}")


async def test_an_unreachable_endpoint_is_a_transient_error() -> None:
    with SimulatedTenant() as stopped:
        url = stopped.jwks_url
    keys = JwksKeys(url, timeout_s=2.0)
    try:
        with pytest.raises(TransientError):
            await keys.key("any")
    finally:
        await keys.close()


async def test_cached_keys_outlive_an_outage_at_max_age(
    sim: SimulatedTenant, clock: FakeClock
) -> None:
    keys = JwksKeys(sim.jwks_url, min_refresh_s=300.0, max_age_s=3600.0, clock=clock)
    try:
        cached = await keys.key(sim.signing_kid)
        sim.add_fault(Fault(method="GET", path_pattern=KEYS_PATH, status=503, times=None))
        clock.now += 3600

        assert await keys.key(sim.signing_kid) is cached
        assert await keys.key(sim.signing_kid) is cached
        assert key_fetches(sim) == 2
    finally:
        await keys.close()


# Parsing the key set -----------------------------------------------------------------------------


def published_jwk(sim: SimulatedTenant, **fields: Any) -> dict[str, Any]:
    [published] = httpx.get(sim.jwks_url).json()["keys"]
    assert isinstance(published, dict)
    return {**published, **fields}


def test_only_rsa_signature_keys_for_rs256_are_kept(sim: SimulatedTenant) -> None:
    good = published_jwk(sim, kid="good")
    private = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048), as_dict=True)
    document = {
        "keys": [
            good,
            {name: value for name, value in good.items() if name != "use"} | {"kid": "no-use"},
            published_jwk(sim, kid="rs256", alg="RS256"),
            published_jwk(sim, kid="encryption", use="enc"),
            published_jwk(sim, kid="ps256", alg="PS256"),
            private | {"kid": "private", "use": "sig"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": 42, "e": "AQAB"},
            {"kty": "RSA", "kid": "", "n": good["n"], "e": good["e"]},
            {"kty": "RSA", "n": good["n"], "e": good["e"]},
            "not a key",
        ]
    }

    assert sorted(signing_keys(document)) == ["good", "no-use", "rs256"]


@pytest.mark.parametrize("document", [[], {"keys": "none"}, {"value": []}, None])
def test_a_document_that_is_no_key_set_is_a_transient_error(document: Any) -> None:
    with pytest.raises(TransientError):
        signing_keys(document)

"""The playbook and its guards: which alerts lead to which actions, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import DEFAULT_PLAYBOOK, PolicySettings
from shared.errors import ConfigError
from shared.models import (
    ActionKind,
    ActionRequest,
    Actor,
    Alert,
    AlertSource,
    Decision,
    Entity,
    EntityKind,
    Severity,
)
from shared.policy import MAX_ACTIONS_PER_ALERT, Guards, Playbook, Policy, Skipped

VICTIM = "5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01"
GUARDED = "0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20"


def alert(
    *entities: Entity,
    severity: Severity = Severity.HIGH,
    category: str = "CredentialAccess",
    source: AlertSource = AlertSource.GRAPH_ALERTS_V2,
) -> Alert:
    return Alert(
        source=source,
        alert_id="a-1",
        title="t",
        severity=severity,
        category=category,
        entities=list(entities),
    )


def user(
    uid: str | None = VICTIM,
    upn: str | None = None,
    roles: tuple[str, ...] = ("compromised",),
    verdict: str | None = None,
) -> Entity:
    return Entity(kind=EntityKind.USER, user_id=uid, upn=upn, roles=roles, verdict=verdict)


def policy(protected: tuple[str, ...] = (GUARDED,), dry_run: bool = False) -> Policy:
    settings = PolicySettings.model_validate(
        {"RESPONDER_PROTECTED_IDENTITIES": ",".join(protected), "RESPONDER_DRY_RUN": dry_run}
    )
    return Policy(Playbook.load(DEFAULT_PLAYBOOK), Guards.from_settings(settings))


def test_a_compromised_user_is_disabled_and_its_sessions_revoked() -> None:
    plan = policy().plan(alert(user()))
    assert [(a.kind, a.target, a.decision) for a in plan.actions] == [
        (ActionKind.DISABLE_ACCOUNT, VICTIM, Decision.EXECUTE),
        (ActionKind.REVOKE_SESSIONS, VICTIM, Decision.EXECUTE),
    ]
    assert all(a.rule == "contain-compromised-user" for a in plan.actions)


@pytest.mark.parametrize(
    "changed",
    [
        {"severity": Severity.MEDIUM},
        {"severity": Severity.UNKNOWN},
        {"category": "Discovery"},
        {"source": AlertSource.SENTINEL, "severity": Severity.LOW},
    ],
)
def test_alerts_outside_the_rule_cause_nothing(changed: dict[str, object]) -> None:
    assert policy().plan(alert(user(), **changed)).actions == []  # type: ignore[arg-type]


def test_victims_and_attackers_are_told_apart_by_role_and_verdict() -> None:
    bystander = user(uid="2d4f6b8a-9c1e-4a3b-8e5d-7f0a2c4e6b31", roles=("victim",))
    flagged = user(uid="8c1e7a52-3f9b-4d26-a0e4-6b5d9c2f7a13", roles=(), verdict="malicious")
    plan = policy().plan(alert(user(), bystander, flagged))
    assert {a.target for a in plan.actions} == {VICTIM, "8c1e7a52-3f9b-4d26-a0e4-6b5d9c2f7a13"}


def test_protected_identities_are_refused_by_id_or_upn() -> None:
    plan = policy(protected=(GUARDED, "ceo@contoso.com")).plan(
        alert(user(uid=GUARDED), user(uid=None, upn="CEO@contoso.com"))
    )
    assert {a.decision for a in plan.actions} == {Decision.REFUSED}
    assert len(plan.actions) == 4
    assert all("protected identity" in a.reason for a in plan.actions)


def test_dry_run_turns_every_action_into_a_plan() -> None:
    plan = policy(dry_run=True).plan(alert(user()))
    assert {(a.decision, a.dry_run) for a in plan.actions} == {(Decision.DRY_RUN, True)}


def test_unusable_evidence_is_reported_not_acted_on() -> None:
    plan = policy().plan(alert(user(uid=None), user(uid="S-1-5-21-1-2-3-500")))
    assert plan.actions == []
    assert [s.reason for s in plan.skipped][0] == "no Entra object id or UPN in evidence"
    assert "GUID" in plan.skipped[1].reason


def test_action_ids_are_deterministic_and_differ_by_alert() -> None:
    first, again = policy().plan(alert(user())), policy().plan(alert(user()))
    assert [a.id for a in first.actions] == [a.id for a in again.actions]
    other = alert(user()).model_copy(update={"alert_id": "a-2"})
    assert {a.id for a in policy().plan(other).actions}.isdisjoint(a.id for a in first.actions)


def test_the_same_user_named_twice_yields_one_action_per_kind() -> None:
    plan = policy().plan(alert(user(), user(uid=None, upn="x@contoso.com")))
    assert len(plan.actions) == 4
    assert len(policy().plan(alert(user(), user())).actions) == 2


def test_every_sentinel_incident_account_is_contained() -> None:
    plan = policy().plan(alert(user(roles=()), source=AlertSource.SENTINEL, category=""))
    assert {a.rule for a in plan.actions} == {"contain-sentinel-incident-accounts"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 1\nrules = []", "rules"),
        ('version = 1\n[[rules]]\nname = "x"\nactions = ["format_disk"]', "actions"),
        (
            'version = 1\n[[rules]]\nname = "x"\nactions = ["disable_account"]\nsevrity = ["high"]',
            "sevrity",
        ),
        ("version = [", "invalid TOML"),
    ],
)
def test_a_bad_playbook_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "playbook.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Playbook.load(path)


def test_a_missing_playbook_is_named() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Playbook.load(Path("/nonexistent/playbook.toml"))


def ip(address: str, roles: tuple[str, ...] = ("attacker",)) -> Entity:
    return Entity(kind=EntityKind.IP, address=address, roles=roles)


def test_attacker_addresses_are_blocked_for_a_day() -> None:
    plan = policy().plan(alert(ip("185.220.101.47"), ip("2a0b:f4c2:2::/48")))
    assert [(a.kind, a.target, a.params) for a in plan.actions] == [
        (ActionKind.BLOCK_IP, "185.220.101.47/32", {"ttl_minutes": 1440}),
        (ActionKind.BLOCK_IP, "2a0b:f4c2:2::/48", {"ttl_minutes": 1440}),
    ]
    assert {a.decision for a in plan.actions} == {Decision.EXECUTE}


def test_victim_addresses_are_not_blocked() -> None:
    assert policy().plan(alert(ip("185.220.101.47", roles=("victim",)))).actions == []


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.0/24", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0/0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not publicly routable"),
        ("185.220.0.0/16", "broader than /24"),
        ("2a0b::/32", "broader than /48"),
        ("203.0.113.5", "reserved for documentation (203.0.113.0/24)"),
        ("198.51.100.0/24", "reserved for documentation (198.51.100.0/24)"),
        ("192.0.2.77", "reserved for documentation (192.0.2.0/24)"),
        ("2001:db8::1", "reserved for documentation (2001:db8::/32)"),
        ("3fff::/48", "reserved for documentation (3fff::/20)"),
        ("203.0.0.0/16", "broader than /24"),
        ("52.96.10.20", "allow-listed"),
    ],
)
def test_ip_guards_refuse_what_must_never_be_blocked(address: str, reason: str) -> None:
    settings = PolicySettings.model_validate({"RESPONDER_IP_ALLOWLIST": "52.96.0.0/14"})
    guarded = Policy(Playbook.load(DEFAULT_PLAYBOOK), Guards.from_settings(settings))
    [action] = guarded.plan(alert(ip(address))).actions
    assert action.decision is Decision.REFUSED
    assert reason in action.reason


@pytest.mark.parametrize(
    "junk",
    ["1.2.3.4; Remove-TransportRule *", "1.2.3.4/24", "999.1.1.1", "1.2.3.4-1.2.3.9", "", "::g"],
)
def test_anything_but_a_parsed_address_never_becomes_an_action(junk: str) -> None:
    plan = policy().plan(alert(ip(junk)))
    assert plan.actions == [] and plan.skipped


def test_a_playbook_action_may_carry_parameters(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        'version = 1\n[[rules]]\nname = "x"\n'
        'actions = [{kind = "block_ip", ttl_minutes = 60, signin_block = true, mode = "delete"}]\n'
    )
    [spec] = Playbook.load(path).rules[0].actions
    assert spec.params() == {"ttl_minutes": 60, "signin_block": True, "mode": "delete"}


def test_one_alert_causes_at_most_a_bounded_number_of_actions() -> None:
    addresses = [f"185.{220 + n // 62500}.{(n // 250) % 250}.{n % 250 + 1}" for n in range(10_000)]
    plan = policy().plan(alert(*(ip(a) for a in addresses)))
    assert len(plan.actions) == MAX_ACTIONS_PER_ALERT
    assert len(plan.skipped) == 10_000 - MAX_ACTIONS_PER_ALERT
    assert plan.skipped[0] == Skipped(
        "block-attacker-ips",
        f"{addresses[MAX_ACTIONS_PER_ALERT]}/32",
        f"more than {MAX_ACTIONS_PER_ALERT} actions from one alert: left to engineers",
    )


def test_what_an_alert_over_the_bound_skips_comes_after_what_it_already_skipped() -> None:
    addresses = [f"185.220.{n // 250}.{n % 250 + 1}" for n in range(MAX_ACTIONS_PER_ALERT + 1)]
    plan = policy().plan(alert(ip(""), *(ip(a) for a in addresses)))
    assert [(s.entity, s.reason) for s in plan.skipped] == [
        ("?", "no address in IP evidence"),
        (
            f"{addresses[-1]}/32",
            f"more than {MAX_ACTIONS_PER_ALERT} actions from one alert: left to engineers",
        ),
    ]


BREAKGLASS_ONE = "1b1b1b1b-0000-4000-8000-000000000001"


def guards(**values: object) -> Guards:
    return Guards.from_settings(PolicySettings.model_validate(values))


def test_break_glass_accounts_are_protected_without_being_listed_twice() -> None:
    settings = {"BREAKGLASS_ACCOUNTS": BREAKGLASS_ONE}
    plan = Policy(Playbook.load(DEFAULT_PLAYBOOK), guards(**settings)).plan(
        alert(user(BREAKGLASS_ONE))
    )
    assert {a.decision for a in plan.actions} == {Decision.REFUSED}
    assert all("protected identity" in a.reason for a in plan.actions)


def test_a_lockout_alert_activates_emergency_access_once_for_all_accounts() -> None:
    lockout = alert(user(), user("9a9a9a9a-0000-4000-8000-000000000009"), category="AdminLockout")
    plan = policy().plan(lockout)
    assert [(a.kind, a.target, a.decision) for a in plan.actions] == [
        (ActionKind.ACTIVATE_BREAKGLASS, "all", Decision.EXECUTE)
    ]


@pytest.mark.parametrize(
    ("setting", "engineer", "automatic"),
    [
        ("human", Decision.NEEDS_APPROVAL, Decision.EXECUTE),
        ("always", Decision.NEEDS_APPROVAL, Decision.NEEDS_APPROVAL),
        ("none", Decision.EXECUTE, Decision.EXECUTE),
    ],
)
def test_who_must_approve_an_emergency_access_activation(
    setting: str, engineer: Decision, automatic: Decision
) -> None:
    checks = guards(BREAKGLASS_APPROVAL=setting)
    action = ActionRequest(
        id="act-x", kind=ActionKind.ACTIVATE_BREAKGLASS, target="all", reason="locked out"
    )
    by_engineer = action.model_copy(
        update={"requested_by": Actor(kind="engineer", name="ada@contoso.com")}
    )
    assert checks.decide(by_engineer).decision is engineer
    assert checks.decide(action).decision is automatic
    assert checks.decide(by_engineer.model_copy(update={"dry_run": True})).decision is (
        Decision.DRY_RUN
    )


@pytest.mark.parametrize(
    ("setting", "engineer"),
    [
        ("human", Decision.NEEDS_APPROVAL),
        ("always", Decision.NEEDS_APPROVAL),
        ("none", Decision.EXECUTE),
    ],
)
def test_an_engineers_early_close_of_emergency_access_needs_a_second_engineer(
    setting: str, engineer: Decision
) -> None:
    checks = guards(BREAKGLASS_APPROVAL=setting)
    expiry = ActionRequest(
        id="act-x", kind=ActionKind.DEACTIVATE_BREAKGLASS, target="all", reason="time is up"
    )
    by_engineer = expiry.model_copy(
        update={"requested_by": Actor(kind="engineer", name="ada@contoso.com")}
    )
    held = checks.decide(by_engineer)
    assert held.decision is engineer
    if engineer is Decision.NEEDS_APPROVAL:
        assert "second engineer" in held.reason
    # The responder's own close at the end of the time box never waits for anyone.
    assert checks.decide(expiry).decision is Decision.EXECUTE


def test_a_rule_can_hold_its_actions_for_approval(tmp_path: Path) -> None:
    book = tmp_path / "p.toml"
    book.write_text(
        'version = 1\n[[rules]]\nname = "held"\n'
        'actions = [{ kind = "disable_account", approval = true, allow_privileged = true }]\n',
        encoding="utf-8",
    )
    plan = Policy(Playbook.load(book), guards()).plan(alert(user()))
    (action,) = plan.actions
    assert action.decision is Decision.NEEDS_APPROVAL
    assert "asks for an engineer's approval" in action.reason
    assert action.params == {"allow_privileged": True}


@pytest.mark.parametrize("target", ["everyone", "", "all; drop", "1.2.3.4"])
def test_break_glass_targets_are_all_or_an_object_id(target: str) -> None:
    with pytest.raises(ValueError, match="break-glass target"):
        ActionRequest(id="act-x", kind=ActionKind.ACTIVATE_BREAKGLASS, target=target)


@pytest.mark.parametrize("value", ["not-a-guid", "0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d2"])
def test_break_glass_accounts_must_be_object_ids(value: str) -> None:
    with pytest.raises(ConfigError, match="BREAKGLASS_ACCOUNTS"):
        PolicySettings.from_env({"BREAKGLASS_ACCOUNTS": value})


# what each planned action records about where it came from -----------------------------------


def test_each_action_names_the_alert_incident_and_rule_it_came_from() -> None:
    incoming = alert(user()).model_copy(update={"incident_id": "inc-7", "title": "Risky sign-in"})
    plan = policy().plan(incoming)
    assert len(plan.actions) == 2
    for action in plan.actions:
        assert action.alert_id == incoming.key == "graph_alerts_v2:a-1"
        assert action.incident_id == "inc-7"
        assert action.rule == "contain-compromised-user"
        assert action.reason == "rule contain-compromised-user: Risky sign-in"
        assert action.requested_by == Actor()


def test_an_untitled_alert_is_named_by_its_id_in_the_reason() -> None:
    untitled = alert(user()).model_copy(update={"title": ""})
    reasons = {a.reason for a in policy().plan(untitled).actions}
    assert reasons == {"rule contain-compromised-user: a-1"}


# address guards, word for word ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "127.0.0.1/32 is loopback"),
        ("fe80::1", "fe80::1/128 is link-local"),
        ("224.0.0.251", "224.0.0.251/32 is multicast"),
        ("0.0.0.0/0", "0.0.0.0/0 is unspecified"),
        ("10.1.2.3", "10.1.2.3/32 is private"),
    ],
)
def test_the_reason_an_address_is_refused_reads_as_prose(address: str, reason: str) -> None:
    assert Guards().ip_block_reason(address) == reason


def test_each_guards_judges_a_network_by_its_own_settings_however_often_asked() -> None:
    """The verdicts are remembered per guards and network, never across guards."""
    partner = guards(RESPONDER_IP_ALLOWLIST="185.220.101.0/24")
    for _ in range(3):
        assert Guards().ip_block_reason("185.220.101.47") is None
        assert partner.ip_block_reason("185.220.101.47") == (
            "185.220.101.47/32 overlaps the allow-listed network 185.220.101.0/24"
        )


def test_the_broadest_network_blocked_is_configurable() -> None:
    wide = guards(IP_BLOCK_MIN_PREFIX_V4="16", IP_BLOCK_MIN_PREFIX_V6="32")
    assert wide.ip_block_reason("185.220.0.0/16") is None
    assert wide.ip_block_reason("185.220.0.0/15") == "185.220.0.0/15 is broader than /16"
    assert wide.ip_block_reason("2a0b::/32") is None
    assert wide.ip_block_reason("2a0a::/31") == "2a0a::/31 is broader than /32"
    narrow = guards(IP_BLOCK_MIN_PREFIX_V4="28", IP_BLOCK_MIN_PREFIX_V6="64")
    assert narrow.ip_block_reason("185.220.101.0/29") is None
    assert narrow.ip_block_reason("185.220.101.0/27") == "185.220.101.0/27 is broader than /28"
    assert narrow.ip_block_reason("2a0b:f4c2:2::/56") == "2a0b:f4c2:2::/56 is broader than /64"


def test_an_allowlist_refuses_only_the_networks_it_overlaps() -> None:
    checks = guards(RESPONDER_IP_ALLOWLIST="52.96.0.0/14,2a01:111::/32")
    assert checks.ip_block_reason("52.97.1.0/24") == (
        "52.97.1.0/24 overlaps the allow-listed network 52.96.0.0/14"
    )
    assert checks.ip_block_reason("2a01:111:f400::/48") == (
        "2a01:111:f400::/48 overlaps the allow-listed network 2a01:111::/32"
    )
    # public networks of either family outside the allowlist are still blocked
    assert checks.ip_block_reason("185.220.101.47") is None
    assert checks.ip_block_reason("2a0b:f4c2:2::/48") is None


def test_the_emergency_access_refusal_names_the_way_to_open_it() -> None:
    checks = guards(BREAKGLASS_ACCOUNTS=BREAKGLASS_ONE)
    assert checks.breakglass_reason(None, BREAKGLASS_ONE.upper()) == (
        f"{BREAKGLASS_ONE.upper()} is an emergency access account: open it with "
        "activate_breakglass (time-boxed, with its approvals), not enable_account"
    )
    assert checks.breakglass_reason("5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01") is None


# playbook errors, as the operator reads them ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'version = 1\n[[rules]]\nname = "contain"\nactions = ["format_disk"]\n',
            "rule 'contain' actions[0].kind: Input should be 'disable_account', 'enable_account', "
            "'revoke_sessions', 'block_ip', 'unblock_ip', 'activate_breakglass' or "
            "'deactivate_breakglass' (got 'format_disk')",
        ),
        (
            'version = 1\n[[rules]]\nactions = ["disable_account"]\n'
            "[[rules]]\nname = 5\nactions = []\n",
            "3 errors: rule #1 name: Field required; rule #2 name: Input should be a valid "
            "string (got 5); rule #2 actions: List should have at least 1 item after "
            "validation, not 0",
        ),
        (
            'version = 1\n[[rules]]\nname = "x"\n'
            'actions = [{kind = "block_ip", ttl_minutes = 2}]\n'
            'entities = {kind = "user", roles = "compromised"}\n',
            "2 errors: rule 'x' entities.roles: Input should be a valid list (got 'compromised'); "
            "rule 'x' actions[0].ttl_minutes: Input should be greater than or equal to 5 (got 2)",
        ),
        (
            'version = 2\nrules = "none"\n',
            "2 errors: version: Input should be less than or equal to 1 (got 2); "
            "rules: Input should be a valid list (got 'none')",
        ),
        (
            'version = 1\n[[rules]]\nname = "x"\nactions = [{kind = "block_ip", mode = "'
            + "z" * 100
            + '"}]\n',
            "rule 'x' actions[0].mode: Input should be 'reject' or 'delete' (got '"
            + "z" * 59
            + ")",
        ),
        (
            "rules = [1]\n",
            "rule #1: Input should be a valid dictionary or instance of Rule (got 1)",
        ),
        (
            'version = 1\nextra = true\n[[rules]]\nname = "a"\nactions = ["disable_account"]\n',
            "extra: Extra inputs are not permitted (got True)",
        ),
        (
            'version = 1\nXmode = "x"\n[[rules]]\nname = "a"\nactions = ["disable_account"]\n',
            "Xmode: Extra inputs are not permitted (got 'x')",
        ),
        (
            'version = 1\n[[rules]]\nname = "a"\nactions = ["disable_account"]\n'
            'entities = {kind = "user", roles = [["x"]]}\n',
            "rule 'a' entities.roles[0]: Input should be a valid string",
        ),
    ],
)
def test_every_playbook_error_names_its_rule_and_place_and_echoes_the_value(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "playbook.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        Playbook.load(path)
    assert str(refused.value) == f"playbook {path}: {message}"


def test_a_playbook_that_is_not_utf8_says_where(tmp_path: Path) -> None:
    path = tmp_path / "playbook.toml"
    path.write_bytes(b"version = 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as refused:
        Playbook.load(path)
    assert str(refused.value) == f"playbook {path}: not UTF-8 at byte 17"


def test_a_playbook_in_utf8_may_use_any_language(tmp_path: Path) -> None:
    path = tmp_path / "playbook.toml"
    path.write_text(
        'version = 1\n[[rules]]\nname = "x"\ndescription = "Konto gesperrt – Ünïcode"\n'
        'actions = ["disable_account"]\n',
        encoding="utf-8",
    )
    assert Playbook.load(path).rules[0].description == "Konto gesperrt – Ünïcode"


# closed and benign alerts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        (
            {"status": "resolved"},
            "alert status is resolved: closed alerts plan nothing (rule may include_closed)",
        ),
        (
            {"status": " Closed "},
            "alert status is  Closed : closed alerts plan nothing (rule may include_closed)",
        ),
        (
            {"status": "Dismissed"},
            "alert status is Dismissed: closed alerts plan nothing (rule may include_closed)",
        ),
        (
            {"classification": "FalsePositive"},
            "alert is classified FalsePositive: benign alerts plan nothing "
            "(rule may include_closed)",
        ),
        (
            {"classification": "informationalExpectedActivity"},
            "alert is classified informationalExpectedActivity: benign alerts plan nothing "
            "(rule may include_closed)",
        ),
        (
            {"classification": "BenignPositive"},
            "alert is classified BenignPositive: benign alerts plan nothing "
            "(rule may include_closed)",
        ),
    ],
)
def test_a_closed_or_benign_alert_contains_no_one_and_says_why(
    changed: dict[str, str], reason: str
) -> None:
    closed = alert(user(), ip("185.220.101.47")).model_copy(update=changed)
    plan = policy().plan(closed)
    assert plan.actions == []
    # each matching rule says why it did nothing, about the alert as a whole
    assert [(s.rule, s.entity, s.reason) for s in plan.skipped] == [
        ("contain-compromised-user", "graph_alerts_v2:a-1", reason),
        ("block-attacker-ips", "graph_alerts_v2:a-1", reason),
    ]


@pytest.mark.parametrize(
    "changed",
    [{"status": "inProgress"}, {"status": "new"}, {"classification": "truePositive"}, {}],
)
def test_an_open_alert_is_acted_on(changed: dict[str, str]) -> None:
    plan = policy().plan(alert(user()).model_copy(update=changed))
    assert [a.kind for a in plan.actions] == [
        ActionKind.DISABLE_ACCOUNT,
        ActionKind.REVOKE_SESSIONS,
    ]
    assert plan.skipped == []


def test_a_rule_may_act_on_closed_alerts(tmp_path: Path) -> None:
    book = tmp_path / "p.toml"
    book.write_text(
        'version = 1\n[[rules]]\nname = "open-only"\nactions = ["disable_account"]\n'
        '[[rules]]\nname = "late"\ninclude_closed = true\nactions = ["revoke_sessions"]\n',
        encoding="utf-8",
    )
    closed = alert(user()).model_copy(update={"status": "resolved"})
    plan = Policy(Playbook.load(book), guards()).plan(closed)
    assert [(a.kind, a.rule) for a in plan.actions] == [(ActionKind.REVOKE_SESSIONS, "late")]
    assert [s.rule for s in plan.skipped] == ["open-only"]


# unusable evidence is reported per rule --------------------------------------------------------


def test_unusable_evidence_names_the_rule_and_the_entity() -> None:
    plan = policy().plan(alert(ip(""), user(uid="S-1-5-21-1-2-3-500")))
    assert plan.actions == []
    assert [(s.rule, s.entity) for s in plan.skipped] == [
        ("contain-compromised-user", "S-1-5-21-1-2-3-500"),
        ("block-attacker-ips", "?"),
    ]
    assert plan.skipped[1].reason == "no address in IP evidence"


# emergency access and approvals, as the engineer reads them -------------------------------------


def test_an_engineers_activation_waits_for_a_second_engineer_and_says_so() -> None:
    request = ActionRequest(
        id="act-x",
        kind=ActionKind.ACTIVATE_BREAKGLASS,
        target="all",
        reason="admins locked out",
        requested_by=Actor(kind="engineer", name="ada@contoso.com"),
    )
    held = guards(BREAKGLASS_APPROVAL="human").decide(request)
    assert held.decision is Decision.NEEDS_APPROVAL
    assert held.reason == (
        "emergency access activation waits for a second engineer (admins locked out)"
    )


def test_an_engineers_early_close_waits_for_a_second_engineer_and_says_so() -> None:
    request = ActionRequest(
        id="act-x",
        kind=ActionKind.DEACTIVATE_BREAKGLASS,
        target="all",
        reason="done",
        requested_by=Actor(kind="engineer", name="ada@contoso.com"),
    )
    held = guards(BREAKGLASS_APPROVAL="human").decide(request)
    assert held.decision is Decision.NEEDS_APPROVAL
    assert held.reason == (
        "closing emergency access before its time waits for a second engineer (done)"
    )


@pytest.mark.parametrize(
    ("target", "aliases"),
    [
        (BREAKGLASS_ONE, ()),  # an engineer's request names only the target
        (BREAKGLASS_ONE.upper(), ()),
        ("bg-01@contoso.com", (None, BREAKGLASS_ONE)),  # named by UPN, resolved to the id
    ],
)
def test_enable_account_never_opens_an_emergency_account_however_named(
    target: str, aliases: tuple[str | None, ...]
) -> None:
    request = ActionRequest(id="act-x", kind=ActionKind.ENABLE_ACCOUNT, target=target)
    decided = guards(BREAKGLASS_ACCOUNTS=BREAKGLASS_ONE).decide(request, *aliases)
    assert decided.decision is Decision.REFUSED
    assert "is an emergency access account" in decided.reason
    ordinary = request.model_copy(update={"target": VICTIM})
    assert guards(BREAKGLASS_ACCOUNTS=BREAKGLASS_ONE).decide(ordinary).decision is (
        Decision.EXECUTE
    )

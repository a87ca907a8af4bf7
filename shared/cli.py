"""The `responder` command: plan an alert offline, run a drill, verify the audit trail.

Exit codes: 0 success, 1 a drill check or the audit verification failed, 2 bad input or
settings (with a one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, InvalidInput

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
FIGURES = (
    "time_to_contain_ms",
    "alerts_sent",
    "addresses_blocked",
    "exchange_calls",
    "transport_rule_shards",
    "graph_calls",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="responder", description="M365 Responder: automated containment for Microsoft 365."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    plan = commands.add_parser("plan", help="show the actions an alert would cause; runs nothing")
    plan.add_argument("--alert", required=True, type=Path, help="alert JSON (any supported shape)")
    plan.add_argument("--policy", type=Path, help="playbook TOML (default: the configured one)")

    drill = commands.add_parser("drill", help="run a containment drill on a simulated tenant")
    drill.add_argument("--scenario", default="compromised-account")
    drill.add_argument("--json", action="store_true", help="print one JSON summary object")

    audit = commands.add_parser("audit", help="work with the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="walk the hash chain")
    verify.add_argument("--json", action="store_true")
    return parser


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _fail(message: str) -> int:
    print(f"responder: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_plan(args: argparse.Namespace) -> int:
    from shared.config import PolicySettings
    from shared.ingest import normalize
    from shared.intake import plan_as_dict
    from shared.policy import Guards, Playbook, Policy

    settings = PolicySettings.from_env()
    try:
        payload = json.loads(args.alert.read_text(encoding="utf-8"))
    except OSError as exc:
        return _fail(f"cannot read {args.alert}: {exc.strerror}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _fail(f"{args.alert} is not valid JSON: {exc}")
    playbook = Playbook.load(args.policy or settings.playbook_path)
    policy = Policy(playbook, Guards.from_settings(settings))
    plans = [plan_as_dict(policy.plan(alert)) for alert in normalize(payload)]
    _print_json(plans[0] if len(plans) == 1 else plans)
    return EXIT_OK


def cmd_drill(args: argparse.Namespace) -> int:
    from drill.runner import run_scenario
    from drill.scenarios import SCENARIOS

    make = SCENARIOS.get(args.scenario)
    if make is None:
        return _fail(f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}")
    scenario = make()
    if not args.json:
        print(f"drill {scenario.name}: {scenario.description}", flush=True)
    report = asyncio.run(run_scenario(scenario))
    summary = report.summary()
    if args.json:
        _print_json(summary)
        return EXIT_OK if report.ok else EXIT_FAILED
    print("\ntimeline (ms since the first alert arrived)")
    for line in report.timeline():
        print(f"  {line}")
    print("\nchecks")
    for name, passed in report.checks.items():
        print(f"  [{'ok' if passed else 'FAILED'}] {name}")
    for problem in report.problems:
        print(f"  [FAILED] {problem}")
    verification = report.verification
    state = "verified" if verification.ok else f"BROKEN at {verification.first_broken_seq}"
    print(
        f"\naudit chain {state}: {verification.records_checked} records, "
        f"head #{verification.head_seq} {verification.head_hash}"
    )
    print(
        f"time to contain: {summary['time_to_contain_ms']} ms; Graph calls: "
        f"{summary['graph_calls']}; result: {'PASS' if report.ok else 'FAIL'}"
    )
    return EXIT_OK if report.ok else EXIT_FAILED


async def _verify() -> dict[str, Any]:
    from shared.config import Settings
    from shared.container import Container

    services = Container(Settings.from_env())
    try:
        return (await services.chain.verify()).as_dict()
    finally:
        await services.close()


def cmd_audit(args: argparse.Namespace) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        result = asyncio.run(_verify())
    except ResourceNotFoundError:
        return _fail("the audit table does not exist (check RESPONDER_AUDIT_TABLE)")
    if args.json:
        _print_json(result)
    elif result["verified"]:
        print(
            f"audit chain verified: {result['records_checked']} records, "
            f"head #{result['head_seq']} {result['head_hash']}"
        )
    else:
        print(f"audit chain BROKEN at record {result['first_broken_seq']}: {result['problem']}")
    return EXIT_OK if result["verified"] else EXIT_FAILED


COMMANDS = {"plan": cmd_plan, "drill": cmd_drill, "audit": cmd_audit}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, InvalidInput) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())

"""The `responder` command: plan an alert (offline, or rehearsed against the tenant), run a
drill, decide held actions, check the emergency accounts, check readiness against the tenant
(`doctor`), verify, query and export the audit trail.

Exit codes: 0 success, 1 a drill check, a readiness check or the audit verification failed,
2 bad input or settings, or a service that cannot be reached or refuses the sign-in (with a
one-line reason on stderr).

Settings come from the environment and, with `--settings FILE`, from a local.settings.json
file's `Values` (the file wins where both name a setting). `--credential` chooses the sign-in:
`azure_cli` or `default` for an engineer on a laptop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shared.errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    from shared.audit_query import AuditFilter
    from shared.container import Container
    from shared.models import AuditRecord
    from shared.policy import Plan

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
CREDENTIALS = ("azure_cli", "default", "managed_identity", "simulator")
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
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="read settings from this local.settings.json (its Values) as well as the environment",
    )
    parser.add_argument(
        "--credential",
        choices=CREDENTIALS,
        help="sign-in for storage, Service Bus and Graph (default: RESPONDER_CREDENTIAL); "
        "azure_cli uses `az login`, default tries DefaultAzureCredential's chain",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    plan = commands.add_parser("plan", help="show the actions an alert would cause; runs nothing")
    plan.add_argument("--alert", required=True, type=Path, help="alert JSON (any supported shape)")
    plan.add_argument("--policy", type=Path, help="playbook TOML (default: the configured one)")
    plan.add_argument(
        "--tenant",
        action="store_true",
        help="also read the tenant: per action the calls, current state and guard verdicts",
    )

    approvals = commands.add_parser("approvals", help="actions waiting for an engineer")
    approval_commands = approvals.add_subparsers(dest="approval_command", required=True)
    pending = approval_commands.add_parser("list", help="pending approvals, oldest expiry first")
    pending.add_argument("--json", action="store_true")
    for verb in ("approve", "reject"):
        decide = approval_commands.add_parser(verb, help=f"{verb} a held action")
        decide.add_argument("action_id")
        decide.add_argument("--by", required=True, metavar="UPN", help="the deciding engineer")
        decide.add_argument("--note", default="", help="why (recorded in the audit)")

    breakglass = commands.add_parser("breakglass", help="emergency access accounts")
    breakglass_commands = breakglass.add_subparsers(dest="breakglass_command", required=True)
    check = breakglass_commands.add_parser("check", help="health check; audits nothing")
    check.add_argument("--json", action="store_true")

    doctor = commands.add_parser(
        "doctor",
        help="readiness checklist against the live tenant (reads only); exit 1 when a check fails",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object")

    drill = commands.add_parser(
        "drill",
        help="run a containment drill on a simulated tenant",
        formatter_class=_ScenarioListFormatter,
        epilog=SCENARIO_LIST,
    )
    drill.add_argument(
        "--scenario", default="compromised-account", help="which drill (listed below)"
    )
    drill.add_argument("--json", action="store_true", help="print one JSON summary object")
    drill.add_argument(
        "--all", action="store_true", help="print the whole timeline, not its start and end"
    )
    drill.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=(
            "a scenario option, repeatable (chaos: users, outage_s, throttle_rate, ...; "
            "audit: writers, per_writer)"
        ),
    )

    audit = commands.add_parser("audit", help="work with the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="walk the hash chain, or check an exported file offline"
    )
    verify.add_argument(
        "--file",
        type=Path,
        metavar="EXPORT",
        help="check this JSON-lines export instead of the trail (no settings needed)",
    )
    verify.add_argument("--json", action="store_true")
    query = audit_commands.add_parser("query", help="one page of matching records, newest first")
    _filter_arguments(query)
    query.add_argument("--limit", default="50", help="records per page, 1 to 200 (default 50)")
    query.add_argument("--continuation", metavar="TOKEN", help="the previous page's token")
    query.add_argument("--json", action="store_true", help="print one JSON object")
    export = audit_commands.add_parser(
        "export", help="every matching record, read page by page (progress on stderr)"
    )
    export.add_argument("--format", required=True, metavar="csv|jsonl")
    _filter_arguments(export)
    export.add_argument("--output", type=Path, metavar="FILE", help="default: standard output")
    export.add_argument(
        "--page-size", default="5000", metavar="N", help="records per page, 1 to 5000"
    )
    export.add_argument(
        "--api",
        metavar="URL",
        help="read the pages from the app's API at this https address instead of the table, "
        "with the access token in RESPONDER_API_TOKEN (role Audit.Read)",
    )
    audit_commands.add_parser("reindex", help="rebuild the audit index from the chain")
    return parser


SCENARIO_LIST = "scenarios:"


class _ScenarioListFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the drills, one line each, only when `drill --help` is shown: importing them loads
    the simulated tenant, which no other command needs."""

    def add_text(self, text: str | None) -> None:
        if text == SCENARIO_LIST:
            from drill.scenarios import SCENARIOS

            rows = [
                f"  {name:<20} {re.split(r'[;.] ', make().description)[0].rstrip('.')}"
                for name, make in SCENARIOS.items()
            ]
            rows.append(f"  {AUDIT_DRILL:<20} Concurrent audit writers, then tampering detected")
            text = "\n".join([SCENARIO_LIST, *rows])
        super().add_text(text)


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    from shared.audit_query import AuditFilter
    from shared.models import ActionKind, AuditEvent

    choices = {
        "kind": ", ".join(str(kind) for kind in ActionKind),
        "outcome": ", ".join(str(event) for event in AuditEvent)
        + " (action.X also as X, e.g. executed)",
    }
    for name in AuditFilter.parameter_names():
        timed = name in AuditFilter.TIMES
        parser.add_argument(f"--{name}", metavar="ISO" if timed else "X", help=choices.get(name))


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

    settings = PolicySettings.from_env(_environ(args))
    try:
        payload = json.loads(args.alert.read_text(encoding="utf-8"))
    except OSError as exc:
        return _fail(f"cannot read {args.alert}: {exc.strerror}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _fail(f"{args.alert} is not valid JSON: {exc}")
    playbook = Playbook.load(args.policy or settings.playbook_path)
    policy = Policy(playbook, Guards.from_settings(settings))
    planned = [policy.plan(alert) for alert in normalize(payload)]
    plans = [plan_as_dict(plan) for plan in planned]
    if args.tenant:
        asyncio.run(_with_services(_rehearse(planned, plans), args))
    _print_json(plans[0] if len(plans) == 1 else plans)
    return EXIT_OK


def _rehearse(
    planned: list[Plan], plans: list[dict[str, Any]]
) -> Callable[[Container, argparse.Namespace], Awaitable[int]]:
    """Adds to every planned action what its executor would do in the tenant right now."""

    async def work(services: Container, args: argparse.Namespace) -> int:
        for plan, shown in zip(planned, plans, strict=True):
            for action, row in zip(plan.actions, shown["actions"], strict=True):
                outcome = await services.runner.rehearse(action)
                row["rehearsal"] = outcome.model_dump(mode="json", exclude_defaults=True)
        return EXIT_OK

    return work


def cmd_approvals(args: argparse.Namespace) -> int:
    from shared.approvals import ApprovalError

    try:
        return asyncio.run(_with_services(_approvals, args))
    except ApprovalError as exc:
        return _fail(f"{exc.detail} ({exc.status})")


async def _approvals(services: Container, args: argparse.Namespace) -> int:
    from shared.models import Actor, validate_user_target

    if args.approval_command == "list":
        pending = await services.approvals.pending()
        rows = [
            {
                "action_id": a.action.id,
                "kind": str(a.action.kind),
                "target": a.action.target,
                "requested_by": a.action.requested_by.name,
                "expires_at": a.expires_at.isoformat(),
                "reason": a.action.reason,
            }
            for a in pending
        ]
        if args.json:
            _print_json(rows)
        for row in [] if args.json else rows:
            print(
                f"{row['action_id']}  {row['kind']} {_printable(row['target'])}  "
                f"by {_printable(row['requested_by'])}, expires {row['expires_at']}: "
                f"{_printable(row['reason'], 80)}"
            )
        if not rows and not args.json:
            print("no actions wait for approval")
        return EXIT_OK
    try:
        engineer = Actor(kind="engineer", name=validate_user_target(args.by))
    except ValueError as exc:
        raise InvalidInput(f"--by: {exc}") from None
    decide = services.approvals.approve
    if args.approval_command == "reject":
        decide = services.approvals.reject
    action = await decide(args.action_id, engineer, args.note)
    done = {"approve": "approved", "reject": "rejected"}[args.approval_command]
    print(f"{done} {action.id} ({action.kind} {action.target}) as {engineer.name}")
    return EXIT_OK


def cmd_breakglass(args: argparse.Namespace) -> int:
    return asyncio.run(_with_services(_breakglass_check, args))


async def _breakglass_check(services: Container, args: argparse.Namespace) -> int:
    findings = await services.emergency.health()
    if args.json:
        _print_json({"ready": not findings, "findings": [vars(f) for f in findings]})
    elif not findings:
        print(f"emergency access ready: {len(services.settings.breakglass_accounts)} accounts")
    for finding in [] if args.json else findings:
        print(f"  [PROBLEM] {finding.account}: {finding.problem}")
    return EXIT_FAILED if findings else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    return asyncio.run(_with_services(_doctor, args))


async def _doctor(services: Container, args: argparse.Namespace) -> int:
    report = await services.readiness.run()
    if args.json:
        _print_json(report.as_dict())
    else:
        for line in report.lines():
            print(line)
    return EXIT_OK if report.ok else EXIT_FAILED


AUDIT_DRILL = "audit"


def _audit_drill(args: argparse.Namespace) -> int:
    """The audit drill: concurrent writers, a checkpoint, each kind of tampering on a copy."""
    from drill.audit_trail import drill

    options = dict(item.partition("=")[::2] for item in args.set)
    unknown = sorted(set(options) - {"writers", "per_writer"})
    if unknown:
        return _fail(f"unknown option {unknown[0]!r}; known: writers, per_writer")
    try:
        writers = int(options.get("writers", "8"))
        per_writer = int(options.get("per_writer", "1000"))
    except ValueError:
        return _fail("writers and per_writer must be whole numbers")
    if not (1 <= writers <= 64 and 2 <= per_writer <= 100_000):
        return _fail("writers must lie in 1..64 and per_writer in 2..100000")
    if not args.json:
        print(f"drill audit: {writers} writers x {per_writer} records, then tampering", flush=True)
    report = asyncio.run(drill(writers, per_writer))
    if args.json:
        _print_json(report)
    else:
        print(
            f"{report['records']} records, {report['append_failures']} failed appends, "
            f"{report['appends_per_s']} appends/s against {report['plain_inserts_per_s']} "
            f"plain inserts/s (ratio {report['ratio']})"
        )
        for kind, found in report["tamper"].items():
            state = "detected" if found["detected"] else "NOT DETECTED"
            print(f"  [{state}] {kind}: {found['problem']}")
        print(f"result: {'PASS' if report['passed'] else 'FAIL'}")
    return EXIT_OK if report["passed"] else EXIT_FAILED


def cmd_drill(args: argparse.Namespace) -> int:
    from drill.runner import run_scenario
    from drill.scenarios import SCENARIOS, WITH_OPTIONS

    if args.scenario == AUDIT_DRILL:
        return _audit_drill(args)
    make = SCENARIOS.get(args.scenario)
    if make is None:
        return _fail(f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}")
    options = dict(item.partition("=")[::2] for item in args.set)
    if options and args.scenario not in WITH_OPTIONS:
        return _fail(f"scenario {args.scenario!r} takes no options")
    try:
        scenario = WITH_OPTIONS[args.scenario](options) if options else make()
    except ValueError as exc:
        return _fail(str(exc))
    if not args.json:
        print(f"drill {scenario.name}: {scenario.description}", flush=True)
    report = asyncio.run(run_scenario(scenario))
    summary = report.summary()
    if args.json:
        _print_json(summary)
        return EXIT_OK if report.ok else EXIT_FAILED
    print("\ntimeline (ms since the first alert arrived)")
    for line in report.timeline(whole=args.all):
        print(f"  {line}")
    print(f"\nnotices sent ({len(report.notices)})")
    for line in report.notices:
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
    figures = {name: summary[name] for name in FIGURES if summary.get(name) is not None}
    print("; ".join(f"{name.replace('_', ' ')}: {value}" for name, value in figures.items()))
    print(f"result: {'PASS' if report.ok else 'FAIL'}")
    return EXIT_OK if report.ok else EXIT_FAILED


async def _with_services(
    work: Callable[[Container, argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    from shared.config import Settings
    from shared.container import Container

    services = Container(Settings.from_env(_environ(args)))
    try:
        return await work(services, args)
    finally:
        await services.close()


def _environ(args: argparse.Namespace) -> dict[str, str]:
    """The settings to read: the environment, a settings file's values over it, and the
    credential chosen on the command line over both."""
    from shared.config import settings_file_values

    values = dict(os.environ)
    if args.settings is not None:
        values.update(settings_file_values(args.settings))
    if args.credential is not None:
        values["RESPONDER_CREDENTIAL"] = args.credential
    return values


def _unreachable(exc: BaseException) -> str | None:
    """One line for a service that cannot be reached or refuses us; None for anything else."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    from shared.errors import ActionError

    detail = " ".join(str(exc).split())[:300]
    if isinstance(exc, ClientAuthenticationError):
        return f"sign-in failed: {detail} (run `az login`, or choose --credential)"
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return f"cannot reach storage or Service Bus: {detail}"
    if isinstance(exc, HttpResponseError):
        if exc.status_code == 403:
            return f"access denied: {detail} (the data roles: docs/permissions.md)"
        return f"the service answered {exc.status_code}: {detail}"
    if isinstance(exc, ActionError):
        return f"Graph or Exchange failed: {detail}"
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"cannot reach a service: {detail}"
    return None


def cmd_audit(args: argparse.Namespace) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    if args.audit_command == "verify" and args.file is not None:
        return _audit_verify_file(args)
    if args.audit_command == "export" and args.api is not None:
        return asyncio.run(_audit_export_api(args))
    try:
        return asyncio.run(_with_services(AUDIT_COMMANDS[args.audit_command], args))
    except ResourceNotFoundError:
        if args.audit_command == "verify":
            return _fail("the audit table does not exist (check RESPONDER_AUDIT_TABLE)")
        return _fail(
            "the audit table or its index table does not exist "
            "(check RESPONDER_AUDIT_TABLE and RESPONDER_AUDIT_INDEX_TABLE)"
        )


async def _audit_verify(services: Container, args: argparse.Namespace) -> int:
    result = (await services.chain.verify()).as_dict()
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


def _audit_verify_file(args: argparse.Namespace) -> int:
    from shared.audit_export import verify_export

    try:
        with args.file.open(encoding="utf-8", newline="\n") as lines:
            verdict = verify_export(lines)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    except UnicodeDecodeError:
        return _fail(f"{args.file} is not UTF-8 text")
    result = verdict.as_dict()
    if args.json:
        _print_json(result)
    elif verdict.ok:
        scope = "whole trail" if verdict.whole_trail else "filtered export, links not checked"
        print(
            f"export verified ({scope}): {verdict.records_checked} records, "
            f"{verdict.checkpoints_checked} checkpoints, "
            f"head #{verdict.head_seq} {verdict.head_hash}"
        )
    else:
        where = verdict.first_broken_seq
        named = f"at record {where}" if where is not None else ""
        print(f"export BROKEN {named}: {_printable(verdict.problem or '', 200)}")
    return EXIT_OK if verdict.ok else EXIT_FAILED


def _audit_filter(args: argparse.Namespace) -> AuditFilter:
    from shared.audit_query import AuditFilter

    params = {name: getattr(args, name) for name in AuditFilter.parameter_names()}
    return AuditFilter.from_params({k: v for k, v in params.items() if v is not None})


def _limit(text: str) -> int:
    from shared.audit_query import MAX_PAGE

    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidInput(f"--limit must be a whole number from 1 to {MAX_PAGE}")
    return int(text)


QUERY_COLUMNS = ("seq", "at", "event", "actor", "kind", "target", "incident", "reason")


def _printable(text: str, width: int = 48) -> str:
    # Audit text comes from alerts and engineers: never let it move the cursor or recolour.
    clean = "".join(char if char.isprintable() else " " for char in text)
    return clean if len(clean) <= width else clean[: width - 1] + "…"


def _query_table(records: list[AuditRecord]) -> list[str]:
    rows = [
        [
            str(record.seq),
            record.entry.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            str(record.entry.event),
            _printable(record.entry.actor.name),
            _printable(record.entry.kind or ""),
            _printable(record.entry.target or ""),
            _printable(record.entry.incident_id or ""),
            _printable(record.entry.reason),
        ]
        for record in records
    ]
    lines = [list(QUERY_COLUMNS), *rows]
    widths = [max(len(cell) for cell in column) for column in zip(*lines, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in lines
    ]


async def _audit_query(services: Container, args: argparse.Namespace) -> int:
    from shared.audit_query import to_row

    flt, limit = _audit_filter(args), _limit(args.limit)
    page = await services.audit_query.page(flt, limit, args.continuation)
    if args.json:
        rows = [to_row(record) for record in page.records]
        _print_json({"records": rows, "continuation": page.continuation})
        return EXIT_OK
    if not page.records:
        print("no matching audit records")
        return EXIT_OK
    for line in _query_table(page.records):
        print(line)
    if page.continuation:
        print(f"\nmore: --continuation {page.continuation}")
    return EXIT_OK


def _export_size(args: argparse.Namespace) -> int:
    from shared.audit_export import EXPORT_PAGE, FORMATS

    if args.format not in FORMATS:
        raise InvalidInput("--format must be csv or jsonl")
    text = args.page_size
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= EXPORT_PAGE:
        raise InvalidInput(f"--page-size must be a whole number from 1 to {EXPORT_PAGE}")
    return int(text)


class _Progress:
    """Counts the records exported and says so on stderr after every page."""

    def __init__(self) -> None:
        self.total = 0

    def page(self, records: int, more: bool) -> None:
        self.total += records
        shown = "…" if more else ", done"
        print(f"audit export: {self.total} records{shown}", file=sys.stderr, flush=True)


async def _audit_export(services: Container, args: argparse.Namespace) -> int:
    from shared.audit_export import export_lines

    size, progress = _export_size(args), _Progress()
    lines = export_lines(
        services.audit_export,
        _audit_filter(args),
        args.format,
        size,
        lambda page: progress.page(page.records, page.continuation is not None),
    )
    return await _save(lines, args, progress)


async def _audit_export_api(args: argparse.Namespace) -> int:
    import httpx

    from shared.adapters.audit_api import ApiRefused, export_pages, export_url
    from shared.audit_query import AuditFilter

    size, progress = _export_size(args), _Progress()
    token = _environ(args).get("RESPONDER_API_TOKEN", "").strip()
    if not token:
        return _fail(
            "set RESPONDER_API_TOKEN to an access token for the API, e.g. "
            "`az account get-access-token --resource <AUTH_AUDIENCE> --query accessToken -o tsv`"
        )
    params = {name: getattr(args, name) for name in AuditFilter.parameter_names()}
    chosen = {name: value for name, value in params.items() if value is not None}
    first = export_url(args.api, {"format": args.format, "limit": str(size), **chosen})
    try:
        return await _save(export_pages(first, token, progress.page), args, progress)
    except ApiRefused as refused:
        return _fail(str(refused))
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach the API: {' '.join(str(exc).split())[:300]}")


async def _save(lines: AsyncIterator[str], args: argparse.Namespace, progress: _Progress) -> int:
    if args.output is None:
        await _write(lines, sys.stdout)
        return EXIT_OK
    try:
        out = args.output.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror}")
    with out:
        await _write(lines, out)
    print(f"exported {progress.total} audit records to {args.output}")
    return EXIT_OK


async def _write(lines: AsyncIterator[str], out: TextIO) -> None:
    async for line in lines:
        out.write(line)
    out.flush()


async def _audit_reindex(services: Container, args: argparse.Namespace) -> int:
    from shared.adapters.table_service import ensure_tables

    if services.settings.tables_connection is not None:  # local: Azure deploys the table
        await ensure_tables(services.tables, services.settings.audit_index_table)
    rebuilt = await services.audit_query.reindex()
    print(f"audit index rebuilt: {rebuilt.entries} entries for {rebuilt.records} records")
    return EXIT_OK


AUDIT_COMMANDS: dict[str, Callable[[Container, argparse.Namespace], Awaitable[int]]] = {
    "verify": _audit_verify,
    "query": _audit_query,
    "export": _audit_export,
    "reindex": _audit_reindex,
}
COMMANDS = {
    "plan": cmd_plan,
    "drill": cmd_drill,
    "audit": cmd_audit,
    "approvals": cmd_approvals,
    "breakglass": cmd_breakglass,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # The SDKs log every failed attempt; the one line below says what went wrong.
        logging.getLogger("azure").setLevel(logging.CRITICAL)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, InvalidInput) as exc:
        return _fail(str(exc))
    except Exception as exc:
        reason = _unreachable(exc)
        if reason is None:
            raise
        return _fail(reason)


if __name__ == "__main__":
    sys.exit(main())

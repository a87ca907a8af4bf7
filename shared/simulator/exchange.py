"""Exchange Online transport rules behind the simulated admin API's `InvokeCommand` endpoint.

As strict as the live endpoint where public captures show it (docs/fidelity.md, section
"Exchange Online admin endpoint"): a missing object is a 400 whose exception type is only in
`details`, a next link cannot be replayed, every answer carries `@adminapi.warnings`, an unknown
cmdlet is a 403 with a body that is not JSON, and throttling carries no Retry-After.

A rule's size is the UTF-8 length of `json.dumps(p, separators=(",", ":"), sort_keys=True)`, where
`p` maps the rule's stored Name, Comments, SenderIpRanges, Mode, RejectMessageEnhancedStatusCode,
RejectMessageReasonText, DeleteMessage and StopRuleProcessing (defaults filled in, nulls left out)
to their values, and a rule larger than `RULE_SIZE_LIMIT` bytes is refused.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from shared.simulator.state import JsonObject, TenantWrite, format_timestamp

RULE_SIZE_LIMIT = 8192
MAX_TRANSPORT_RULES = 300
MAX_NAME_LENGTH = 64
MAX_TEXT_LENGTH = 1024
# Rows per answer without a `Prefer: odata.maxpagesize` header: not published (a live tenant
# answered at least 3 without one), so a modest default; the header can ask for up to
# MAX_PAGE_SIZE.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

MODES = ("Enforce", "Audit", "AuditAndNotify")
DEFAULT_REJECT_STATUS_CODE = "5.7.1"
DEFAULT_REJECT_REASON_TEXT = "Delivery not authorized, message refused"

# What a rule stores and rule_size() counts, in the casing Get-TransportRule reports.
SIZED_PARAMETERS = (
    "Name",
    "Comments",
    "SenderIpRanges",
    "Mode",
    "RejectMessageEnhancedStatusCode",
    "RejectMessageReasonText",
    "DeleteMessage",
    "StopRuleProcessing",
)
_RULE_PARAMETERS = (*SIZED_PARAMETERS, "Priority", "Confirm")
_CMDLETS: dict[str, tuple[str, ...]] = {
    "Get-TransportRule": ("Identity", "ResultSize"),
    "New-TransportRule": _RULE_PARAMETERS,
    "Set-TransportRule": ("Identity", *_RULE_PARAMETERS),
    "Remove-TransportRule": ("Identity", "Confirm"),
}
_DEFAULTS: JsonObject = {"Mode": "Enforce", "DeleteMessage": False, "StopRuleProcessing": False}

_STATUS_CODE = re.compile(r"^5\.7\.(1|9\d\d)$")
# The admin API reports every failed cmdlet as this service exception; the cmdlet's own
# exception type and text only appear in `details` and `internalexception`.
_SERVICE_EXCEPTION = "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"
NOT_FOUND = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
# A missing object's answer names the cmdlet exception only in `details`, under this id; the
# internal exception is the wrapper the cmdlet invocation threw.
_NOT_FOUND_ID = "Ex6F9304"
_DIRECT_INVOKE = "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeCmdletExecutionException"
_BINDING = "System.Management.Automation.ParameterBindingException"
_VALIDATION = "Microsoft.Exchange.Management.Tasks.ValidationException"
_NO_SUCH_CMDLET = "System.Management.Automation.CommandNotFoundException"
_DOMAIN_CONTROLLER = "SIMPR01A001DC001.PROD.OUTLOOK.COM"
_PREFER_PAGE_SIZE = re.compile(r"(?:^|[,;\s])odata\.maxpagesize=(\d+)", re.IGNORECASE)
TRUNCATION_WARNING = (
    "There are more results available than are currently displayed. To view them, increase "
    "the value for the ResultSize parameter."
)
PAGINATION_EXPIRED = "Expired or Invalid pagination request. Default Expiry time is 00:30:00"
# What live tenants sent for a cmdlet the app may not run (or that does not exist): 403 and a
# run of NUL bytes.
_NOT_JSON_FORBIDDEN = bytes(4096)


class CmdletError(Exception):
    """A failed InvokeCommand, answered in the admin API's error envelope.

    The top-level message is "Invalid Operation" ("Error executing cmdlet" with a 500); the
    reason is in `details[0].message`, prefixed `|<exception type>|` as live tenants send it, and
    in `innererror.internalexception`. A missing object is the exception: its type and text are
    only in `details` (prefixed `Ex6F9304|<type>|`), and the internal exception is the invocation
    wrapper. `raw`, when set, is sent as the whole body instead of the envelope.
    """

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        exception_type: str = _SERVICE_EXCEPTION,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.exception_type = exception_type
        self.headers = dict(headers or {})
        self.raw = raw

    def body(self) -> JsonObject:
        message = "Error executing cmdlet" if self.status == 500 else "Invalid Operation"
        if self.exception_type == NOT_FOUND:
            detail = f"{_NOT_FOUND_ID}|{self.exception_type}|{self.reason}"
            internal = {
                "message": f"Exception of type '{_DIRECT_INVOKE}' was thrown.",
                "type": _DIRECT_INVOKE,
                "stacktrace": "",
            }
        else:
            detail = f"|{self.exception_type}|{self.reason}"
            internal = {"message": self.reason, "type": self.exception_type, "stacktrace": ""}
        return {
            "error": {
                "code": self.code,
                "message": message,
                "details": [{"code": "Client", "target": "", "message": detail}],
                "innererror": {
                    "message": message,
                    "type": _SERVICE_EXCEPTION,
                    "stacktrace": "",
                    "internalexception": internal,
                },
                "adminapi.warnings@odata.type": "#Collection(String)",
                "@adminapi.warnings": [],
            }
        }


def rule_size(params: Mapping[str, Any]) -> int:
    """Bytes that a rule with these settings counts against `RULE_SIZE_LIMIT`.

    Only the stored parameters count and null values are left out, so a Get-TransportRule object
    gives exactly the size the simulator checked. Defaults the simulator fills in (Mode "Enforce",
    DeleteMessage and StopRuleProcessing false, and the other Reject* value when only one is set)
    count as well.
    """
    sized = {name: params[name] for name in SIZED_PARAMETERS if params.get(name) is not None}
    return len(json.dumps(sized, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def parse_invocation(body: bytes) -> tuple[str, JsonObject]:
    """The cmdlet name and parameters of an InvokeCommand body; CmdletError 400 if malformed."""
    try:
        envelope = json.loads(body)
    except ValueError:
        raise CmdletError(400, "BadRequest", "The request body is not valid JSON.") from None
    cmdlet_input = envelope.get("CmdletInput") if isinstance(envelope, dict) else None
    if not isinstance(cmdlet_input, dict):
        raise CmdletError(
            400, "BadRequest", "The request body must be an object with a 'CmdletInput' object."
        )
    name = cmdlet_input.get("CmdletName")
    if not isinstance(name, str) or not name:
        raise CmdletError(400, "BadRequest", "'CmdletInput.CmdletName' must be a cmdlet name.")
    parameters = cmdlet_input.get("Parameters", {})
    if not isinstance(parameters, dict):
        raise CmdletError(400, "BadRequest", "'CmdletInput.Parameters' must be an object.")
    return name, parameters


@dataclass
class _Rule:
    guid: str
    params: JsonObject
    when_changed: datetime


@dataclass
class _Hook:
    cmdlet: str
    run: Callable[[], None]
    remaining: int


class TransportRuleStore:
    """Transport rules in priority order, the InvokeCommand log and the before-cmdlet hooks.

    Every method takes the one lock; hooks are handed out to run outside it, since they usually
    edit rules themselves.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._calls: list[tuple[str, JsonObject]] = []
        self._hooks: list[_Hook] = []
        self._last_change = datetime.min.replace(tzinfo=UTC)
        self._warnings: dict[str, list[str]] = {}
        self._headers: list[dict[str, str | None]] = []
        # How a missing object is answered: 400 as live tenants mostly do, or 500.
        self.not_found_status = 400
        # The most rows one answer holds, whatever the client prefers.
        self.max_page_size = MAX_PAGE_SIZE
        # Where next links point; None: this endpoint.
        self.next_link_base: str | None = None
        self._writes: list[TenantWrite] = []

    def rules(self) -> list[JsonObject]:
        with self._lock:
            return [self._json(rule, priority) for priority, rule in enumerate(self._rules)]

    def page(self, identity: str | None, limit: int) -> tuple[list[JsonObject], bool]:
        """The named rule, or the first `limit` rules in priority order, and whether more
        rules were left out."""
        with self._lock:
            if identity is not None:
                index = self._index(identity)
                return [self._json(self._rules[index], index)], False
            page = [self._json(rule, priority) for priority, rule in enumerate(self._rules[:limit])]
            return page, len(self._rules) > limit

    def new(self, parameters: Mapping[str, Any]) -> JsonObject:
        changes = _settable(parameters, _RULE_PARAMETERS)
        changes.pop("Confirm", None)
        priority = changes.pop("Priority", None)
        if "Name" not in changes:
            raise _binding_error("Missing an argument for the mandatory parameter 'Name'.")
        with self._lock:
            if len(self._rules) >= MAX_TRANSPORT_RULES:
                raise _validation_error(
                    f"The organization already has the maximum of {MAX_TRANSPORT_RULES} "
                    "transport rules. Remove a rule before you create another one."
                )
            self._check_unique(changes["Name"], None)
            stored = _stored({**_DEFAULTS, **changes})
            if priority is None:
                priority = len(self._rules)
            elif priority > len(self._rules):
                raise _priority_error(priority, len(self._rules))
            rule = _Rule(str(uuid.uuid4()), stored, self._tick())
            self._rules.insert(priority, rule)
            self._writes.append(
                TenantWrite(rule.when_changed, "New-TransportRule", rule.guid, True)
            )
            return self._json(rule, priority)

    def set(self, identity: str, parameters: Mapping[str, Any]) -> JsonObject:
        changes = _settable(_without(parameters, "Identity"), _RULE_PARAMETERS)
        changes.pop("Confirm", None)
        priority = changes.pop("Priority", None)
        with self._lock:
            index = self._index(identity)
            rule = self._rules[index]
            if "Name" in changes:
                self._check_unique(changes["Name"], rule)
            stored = _stored({**rule.params, **changes})
            if priority is not None and priority >= len(self._rules):
                raise _priority_error(priority, len(self._rules) - 1)
            changed = _meaning(stored) != _meaning(rule.params) or priority not in (None, index)
            rule.params = stored
            rule.when_changed = self._tick()
            self._writes.append(
                TenantWrite(rule.when_changed, "Set-TransportRule", rule.guid, changed)
            )
            if priority is not None:
                self._rules.insert(priority, self._rules.pop(index))
                index = priority
            return self._json(rule, index)

    def remove(self, identity: str) -> None:
        with self._lock:
            rule = self._rules.pop(self._index(identity))
            self._writes.append(
                TenantWrite(datetime.now(UTC), "Remove-TransportRule", rule.guid, True)
            )

    def record_call(
        self,
        cmdlet: str,
        parameters: Mapping[str, Any],
        headers: Mapping[str, str | None] | None = None,
    ) -> None:
        stored = copy.deepcopy(dict(parameters))
        with self._lock:
            self._calls.append((cmdlet, stored))
            self._headers.append(dict(headers or {}))

    def call_headers(self) -> list[dict[str, str | None]]:
        with self._lock:
            return copy.deepcopy(self._headers)

    def add_warning(self, cmdlet: str, text: str) -> None:
        with self._lock:
            self._warnings.setdefault(cmdlet.lower(), []).append(text)

    def take_warnings(self, cmdlet: str) -> list[str]:
        with self._lock:
            return self._warnings.pop(cmdlet.lower(), [])

    def calls(self) -> list[tuple[str, JsonObject]]:
        with self._lock:
            return copy.deepcopy(self._calls)

    def writes(self) -> list[TenantWrite]:
        """The rule writes carried out (refused ones are not), oldest first."""
        with self._lock:
            return list(self._writes)

    def add_hook(self, cmdlet: str, run: Callable[[], None], times: int) -> None:
        if times < 1:
            raise ValueError(f"a hook must run at least once, got times={times}")
        with self._lock:
            self._hooks.append(_Hook(cmdlet.lower(), run, times))

    def take_hooks(self, cmdlet: str) -> list[Callable[[], None]]:
        """The hooks due before this cmdlet, in the order added, counting this call against them."""
        due: list[Callable[[], None]] = []
        with self._lock:
            for hook in list(self._hooks):
                if hook.cmdlet == cmdlet.lower():
                    due.append(hook.run)
                    hook.remaining -= 1
                    if hook.remaining == 0:
                        self._hooks.remove(hook)
        return due

    def _index(self, identity: str) -> int:
        wanted = identity.lower()
        for index, rule in enumerate(self._rules):
            if wanted in (rule.guid.lower(), rule.params["Name"].lower()):
                return index
        raise CmdletError(
            self.not_found_status,
            "InternalServerError" if self.not_found_status == 500 else "BadRequest",
            f"The operation couldn't be performed because object '{identity}' couldn't be "
            f"found on '{_DOMAIN_CONTROLLER}'.",
            NOT_FOUND,
        )

    def _check_unique(self, name: str, renamed: _Rule | None) -> None:
        for rule in self._rules:
            if rule is not renamed and rule.params["Name"].lower() == name.lower():
                raise _validation_error(
                    f"A transport rule named '{name}' already exists. Rule names must be unique."
                )

    def _tick(self) -> datetime:
        # WhenChanged must move on every change, even two within one clock tick, so a client
        # comparing it between its read and its write always sees an edit.
        now = datetime.now(UTC)
        if now <= self._last_change:
            now = self._last_change + timedelta(microseconds=1)
        self._last_change = now
        return now

    @staticmethod
    def _json(rule: _Rule, priority: int) -> JsonObject:
        params = copy.deepcopy(rule.params)
        return {
            "Name": params["Name"],
            "Identity": params["Name"],
            "Guid": rule.guid,
            "Priority": priority,
            "State": "Enabled",
            "Mode": params["Mode"],
            "Comments": params["Comments"],
            "SenderIpRanges": params["SenderIpRanges"],
            "RejectMessageEnhancedStatusCode": params["RejectMessageEnhancedStatusCode"],
            "RejectMessageReasonText": params["RejectMessageReasonText"],
            "DeleteMessage": params["DeleteMessage"],
            "StopRuleProcessing": params["StopRuleProcessing"],
            "WhenChanged": format_timestamp(rule.when_changed),
        }


class ExchangeApi:
    """The InvokeCommand semantics of the simulator, free of HTTP plumbing."""

    def __init__(
        self, store: TransportRuleStore, base_url: str, tenant_names: tuple[str, ...]
    ) -> None:
        self._store = store
        self._base_url = base_url
        self._tenant_names = {name.lower() for name in tenant_names}

    def invoke(
        self, tenant: str, query: Mapping[str, str], body: bytes, headers: Mapping[str, str]
    ) -> JsonObject:
        if tenant.lower() not in self._tenant_names:
            raise CmdletError(404, "NotFound", f"Tenant '{tenant}' was not found.")
        requested, parameters = parse_invocation(body)
        cmdlet = _canonical(requested, _CMDLETS)
        if cmdlet is None:
            # Live tenants answered an unknown (or not permitted) cmdlet with 403 and a body
            # that is not JSON at all.
            raise CmdletError(
                403,
                "Forbidden",
                f"The term '{requested}' is not recognized as a name of a cmdlet.",
                _NO_SUCH_CMDLET,
                raw=_NOT_JSON_FORBIDDEN,
            )
        if "$skiptoken" in query:
            # A next link cannot be replayed: live tenants answer every replay so, at once.
            raise CmdletError(400, "BadRequest", PAGINATION_EXPIRED)
        arguments = _settable(parameters, _CMDLETS[cmdlet])
        for run in self._store.take_hooks(cmdlet):
            run()
        value: list[JsonObject] = []
        truncated = False
        match cmdlet:
            case "Get-TransportRule":
                limit = min(_page_size(headers, self._store.max_page_size), _result_size(arguments))
                value, truncated = self._store.page(arguments.get("Identity"), limit)
            case "New-TransportRule":
                value = [self._store.new(parameters)]
            case "Set-TransportRule":
                self._store.set(_identity(arguments), parameters)
            case "Remove-TransportRule":
                self._store.remove(_identity(arguments))
        warnings = self._store.take_warnings(cmdlet)
        answer: JsonObject = {
            "@odata.context": f"{self._tenant_url(tenant)}/$metadata#Collection("
            "Exchange.GenericHashTable)",
        }
        if truncated:
            base = self._store.next_link_base or self._tenant_url(tenant)
            token = secrets.token_urlsafe(30)
            answer["@odata.nextLink"] = f"{base}/InvokeCommand?%24skiptoken={token}"
            warnings.append(TRUNCATION_WARNING)
        answer["adminapi.warnings@odata.type"] = "#Collection(String)"
        answer["@adminapi.warnings"] = warnings
        answer["value"] = value
        return answer

    def _tenant_url(self, tenant: str) -> str:
        return f"{self._base_url}/adminapi/beta/{quote(tenant, safe='@')}"


def _canonical(name: str, known: Mapping[str, Any] | tuple[str, ...]) -> str | None:
    # PowerShell matches cmdlet and parameter names case-insensitively.
    for candidate in known:
        if candidate.lower() == name.lower():
            return candidate
    return None


def _settable(parameters: Mapping[str, Any], allowed: tuple[str, ...]) -> JsonObject:
    """Parameters under their canonical names with checked values; CmdletError 400 otherwise."""
    checked: JsonObject = {}
    for given, value in parameters.items():
        name = _canonical(given, allowed)
        if name is None:
            raise _binding_error(
                f"A parameter cannot be found that matches parameter name '{given}'."
            )
        checked[name] = _checked(name, value)
    return checked


def _checked(name: str, value: Any) -> Any:
    match name:
        case "Name" | "Identity":
            if not isinstance(value, str) or not value.strip():
                raise _binding_error(f"Parameter '{name}' must be a non-empty string.")
            if name == "Name" and len(value) > MAX_NAME_LENGTH:
                raise _validation_error(
                    f"The rule name is {len(value)} characters long; the maximum is "
                    f"{MAX_NAME_LENGTH}."
                )
            return value
        case "Comments" | "RejectMessageReasonText":
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise _binding_error(f"Parameter '{name}' must be a string.")
            if len(value) > MAX_TEXT_LENGTH:
                raise _validation_error(
                    f"{name} is {len(value)} characters long; the maximum is {MAX_TEXT_LENGTH}."
                )
            return value
        case "SenderIpRanges":
            return _ip_ranges(value)
        case "Mode":
            mode = _canonical(value, MODES) if isinstance(value, str) else None
            if mode is None:
                raise _binding_error(
                    f"Cannot convert value '{value}' to type RuleMode; valid values are "
                    f"{', '.join(MODES)}."
                )
            return mode
        case "RejectMessageEnhancedStatusCode":
            if value is None or value == "":
                return None
            if not isinstance(value, str) or not _STATUS_CODE.match(value):
                raise _validation_error(
                    f"'{value}' isn't a valid RejectMessageEnhancedStatusCode; use 5.7.1 or a "
                    "code from 5.7.900 through 5.7.999."
                )
            return value
        case "ResultSize":
            if isinstance(value, str) and value.lower() == "unlimited":
                return "Unlimited"
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _binding_error(
                    f"Cannot convert value '{value}' to type Unlimited: use 'Unlimited' or a "
                    "positive number."
                )
            return value
        case "Priority":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _binding_error(
                    f"Parameter 'Priority' must be a non-negative integer: {value!r}."
                )
            return value
        case _:
            if not isinstance(value, bool):
                raise _binding_error(f"Parameter '{name}' must be true or false.")
            return value


def _ip_ranges(value: Any) -> list[str] | None:
    if value is None:
        return None
    # A lone string binds to the multi-valued parameter as one entry, as in PowerShell.
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        raise _binding_error("Parameter 'SenderIpRanges' must be a list of strings.")
    for entry in entries:
        if not isinstance(entry, str) or not _is_ip_range(entry):
            raise _validation_error(
                f"'{entry}' isn't a valid IP address or range for SenderIpRanges. Use a single "
                "address (192.168.1.1), a range (192.168.0.1-192.168.0.254) or a CIDR range "
                "(192.168.0.1/25)."
            )
    return list(entries) or None


def _is_ip_range(entry: str) -> bool:
    # Exact text only: no surrounding spaces, separators or IPv6 zone ids slip through.
    if not entry or entry != entry.strip() or "%" in entry:
        return False
    try:
        if "/" in entry:
            address, _, prefix = entry.partition("/")
            if not prefix.isdigit() or not address:
                return False
            # Exchange's own example, 192.168.0.1/25, has host bits set, so they are allowed.
            ipaddress.ip_network(entry, strict=False)
            return True
        if "-" in entry:
            first, _, last = entry.partition("-")
            low, high = ipaddress.ip_address(first), ipaddress.ip_address(last)
            return low.version == high.version and low <= high  # type: ignore[operator]
        ipaddress.ip_address(entry)
        return True
    except ValueError:
        return False


def _meaning(params: Mapping[str, Any]) -> JsonObject:
    """A rule's parameters with the address ranges as a set: their order means nothing."""
    ranges = params.get("SenderIpRanges")
    return {**params, "SenderIpRanges": sorted(ranges) if ranges else ranges}


def _stored(params: Mapping[str, Any]) -> JsonObject:
    """The rule as stored: every sized parameter, the Reject* pair completed, size checked."""
    stored: JsonObject = {name: params.get(name) for name in SIZED_PARAMETERS}
    status, text = stored["RejectMessageEnhancedStatusCode"], stored["RejectMessageReasonText"]
    # Exchange completes a half-given rejection with its defaults.
    if status is not None and text is None:
        stored["RejectMessageReasonText"] = DEFAULT_REJECT_REASON_TEXT
    elif text is not None and status is None:
        stored["RejectMessageEnhancedStatusCode"] = DEFAULT_REJECT_STATUS_CODE
    size = rule_size(stored)
    if size > RULE_SIZE_LIMIT:
        raise _validation_error(
            f"The transport rule '{stored['Name']}' is {size} bytes, which exceeds the limit of "
            f"{RULE_SIZE_LIMIT} bytes (8 KB) for a single rule."
        )
    return stored


def _identity(arguments: Mapping[str, Any]) -> str:
    identity = arguments.get("Identity")
    if not isinstance(identity, str):
        raise _binding_error("Missing an argument for the mandatory parameter 'Identity'.")
    return identity


def _without(parameters: Mapping[str, Any], name: str) -> JsonObject:
    return {key: value for key, value in parameters.items() if key.lower() != name.lower()}


def _priority_error(priority: int, highest: int) -> CmdletError:
    return _validation_error(f"Priority {priority} is out of range; use 0 through {highest}.")


def _binding_error(reason: str) -> CmdletError:
    return CmdletError(400, "BadRequest", reason, _BINDING)


def _validation_error(reason: str) -> CmdletError:
    return CmdletError(400, "BadRequest", reason, _VALIDATION)


def _page_size(headers: Mapping[str, str], most: int) -> int:
    """Rows per answer: what `Prefer: odata.maxpagesize=N` asks for, within `most`."""
    prefer = next((v for k, v in headers.items() if k.lower() == "prefer"), "")
    match = _PREFER_PAGE_SIZE.search(prefer)
    wanted = int(match.group(1)) if match else PAGE_SIZE
    return max(1, min(wanted, most))


def _result_size(arguments: Mapping[str, Any]) -> int:
    # Get-TransportRule's default ResultSize is not stated for Exchange Online; none of the
    # organization's at most 300 rules is left out by it, so only a number given limits.
    size = arguments.get("ResultSize", "Unlimited")
    return MAX_TRANSPORT_RULES if size == "Unlimited" else int(size)

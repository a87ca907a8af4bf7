"""The Bicep in infra/ and the code agree: every setting the code reads is set (or deliberately
left out), the triggers' bindings resolve, and the roles stay least-privilege.

No Bicep compiler runs here: the files are read as text, comments stripped, blocks matched by
their braces.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from shared.config import Settings
from shared.permissions import EXCHANGE_AUDIENCE, GRAPH_AUDIENCE, manifest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

# Built-in role ids (Azure built-in roles reference).
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
STORAGE_TABLE_DATA_READER = "76199698-9eea-4c19-bc75-cec21354c6b6"
FORBIDDEN_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "090c5cfd-751d-490a-894a-3ce6f1109419": "Azure Service Bus Data Owner",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
}
ENTITIES = "Microsoft.Storage/storageAccounts/tableServices/tables/entities"
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --- reading Bicep as text -----------------------------------------------------------------


def strip_comments(text: str) -> str:
    """Drop // and /* */ comments, keeping string literals (which may hold '//')."""
    out: list[str] = []
    i, in_string = 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1])
                i += 1
            elif char == "'":
                in_string = False
        elif char == "'":
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                break
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def braced(text: str, open_at: int) -> str:
    """The text between the brace or bracket at `open_at` and its partner, strings skipped."""
    opening = text[open_at]
    closing = {"{": "}", "[": "]"}[opening]
    depth, in_string = 0, False
    for i in range(open_at, len(text)):
        char = text[i]
        if in_string:
            in_string = char != "'"
        elif char == "'":
            in_string = True
        elif char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    raise ValueError(f"unbalanced {opening} at offset {open_at}")


@cache
def bicep(name: str) -> str:
    return strip_comments((INFRA / name).read_text())


@dataclass(frozen=True)
class Declaration:
    keyword: str  # resource or module
    symbol: str
    target: str  # resource type or module path
    existing: bool
    body: str


DECLARATION = re.compile(
    r"^\s*(resource|module)\s+(\w+)\s+'([^']+)'(\s+existing)?\s*=\s*(?:if\s*\(.*?\)\s*)?\{",
    re.MULTILINE,
)


def declarations(name: str) -> list[Declaration]:
    text = bicep(name)
    return [
        Declaration(m[1], m[2], m[3], bool(m[4]), braced(text, m.end() - 1))
        for m in DECLARATION.finditer(text)
    ]


def declaration(name: str, symbol: str) -> Declaration:
    found = [d for d in declarations(name) if d.symbol == symbol]
    assert len(found) == 1, f"{name} declares {symbol!r} {len(found)} times"
    return found[0]


def block(body: str, key: str) -> str:
    """The object or array value of `key:` inside `body`."""
    match = re.search(rf"(?m)^\s*{re.escape(key)}\s*:\s*([{{\[])", body)
    assert match, f"no {key} block"
    return braced(body, match.start(1))


def entries(body: str) -> dict[str, str]:
    """Top-level `key: value` lines of an object body (nested blocks are skipped)."""
    result: dict[str, str] = {}
    depth = 0
    for line in body.splitlines():
        if depth == 0 and (m := re.match(r"\s*'?([A-Za-z_][\w-]*)'?\s*:\s*(.*?)\s*$", line)):
            result[m[1]] = m[2]
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return result


def strings(array_body: str) -> list[str]:
    return re.findall(r"'([^']*)'", array_body)


def string_vars(name: str) -> dict[str, str]:
    return dict(re.findall(r"(?m)^var\s+(\w+)\s*=\s*'([^']*)'", bicep(name)))


# --- what the app needs and what api.bicep sets ---------------------------------------------


def app_settings() -> dict[str, str]:
    match = re.search(r"(?m)^var\s+appSettings\s*=\s*\{", bicep("app/api.bicep"))
    assert match, "api.bicep has no appSettings variable"
    return entries(braced(bicep("app/api.bicep"), match.end() - 1))


def local_only_settings() -> set[str]:
    raw = (INFRA / "app" / "api.bicep").read_text()
    return set(re.findall(r"(?m)^\s*//\s*local-only:\s*(\S+)", raw))


def trigger_sources() -> str:
    return "\n".join(path.read_text() for path in sorted((ROOT / "functions").glob("*.py")))


def binding_expressions() -> set[str]:
    return set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", trigger_sources()))


def connection_prefixes() -> set[str]:
    return set(re.findall(r"\bconnection\s*=\s*\"([^\"]+)\"", trigger_sources()))


def test_every_setting_the_code_reads_is_set_or_declared_local_only() -> None:
    settings, local_only = set(app_settings()), local_only_settings()
    assert local_only, "api.bicep lost its local-only comment block"
    assert Settings.setting_names() - settings - local_only == set()
    assert local_only & settings == set(), "a setting marked local-only is set in Azure"
    assert local_only - Settings.setting_names() == set(), "stale local-only entries"


def test_every_app_setting_is_read_by_the_code_or_the_host() -> None:
    host_prefixes = ("AzureWebJobsStorage__", "APPLICATIONINSIGHTS_") + tuple(
        f"{prefix}__" for prefix in connection_prefixes()
    )
    unknown = {
        name
        for name in app_settings()
        if name not in Settings.setting_names() and not name.startswith(host_prefixes)
    }
    assert unknown == set()


def test_binding_expressions_and_connections_resolve_to_app_settings() -> None:
    settings = app_settings()
    expressions, prefixes = binding_expressions(), connection_prefixes()
    assert expressions and prefixes, "no bindings found in functions/: the parser is stale"
    assert expressions - set(settings) == set()
    for prefix in prefixes:
        assert f"{prefix}__fullyQualifiedNamespace" in settings
        assert settings.get(f"{prefix}__credential") == "'managedidentity'"
        assert f"{prefix}__clientId" in settings


def test_identity_settings_name_the_user_assigned_identity() -> None:
    settings = app_settings()
    client_id = "identity.properties.clientId"
    assert settings["RESPONDER_CREDENTIAL"] == "'managed_identity'"
    assert settings["AZURE_CLIENT_ID"] == client_id
    assert settings["AzureWebJobsStorage__clientId"] == client_id
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["RESPONDER_WEBHOOK_SECRET"].startswith("'@Microsoft.KeyVault(SecretUri=")
    site = declaration("app/api.bicep", "functionApp").body
    assert re.search(r"keyVaultReferenceIdentity:\s*identity\.id\b", site)


# --- roles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    symbol: str
    scope: str
    role: str  # a built-in role id, or the symbol of a custom role definition
    name_args: tuple[str, ...]


def role_assignments() -> list[Assignment]:
    role_ids = string_vars("app/rbac.bicep")
    found = []
    for decl in declarations("app/rbac.bicep"):
        if not decl.target.startswith("Microsoft.Authorization/roleAssignments@"):
            continue
        fields = entries(decl.body) | entries(block(decl.body, "properties"))
        role_ref = re.fullmatch(
            r"subscriptionResourceId\('Microsoft\.Authorization/roleDefinitions',\s*"
            r"(\w+)(\.name)?\)",
            fields["roleDefinitionId"],
        )
        assert role_ref, f"{decl.symbol}: unexpected roleDefinitionId {fields['roleDefinitionId']}"
        role = role_ids[role_ref[1]] if not role_ref[2] else role_ref[1]
        name_args = re.fullmatch(r"guid\((.*)\)", fields["name"])
        assert name_args, f"{decl.symbol}: the name is not a guid(...)"
        args = tuple(arg.strip() for arg in name_args[1].split(","))
        found.append(Assignment(decl.symbol, fields["scope"], role, args))
    return found


def custom_roles() -> dict[str, Declaration]:
    return {
        d.symbol: d
        for d in declarations("app/rbac.bicep")
        if d.target.startswith("Microsoft.Authorization/roleDefinitions@")
    }


def audit_table_symbol() -> str:
    tables = [
        d.symbol
        for d in declarations("app/rbac.bicep")
        if d.target == "tables" and entries(d.body).get("name") == "auditTableName"
    ]
    assert len(tables) == 1
    return tables[0]


def test_audit_role_can_read_and_insert_but_never_change_or_delete() -> None:
    roles = custom_roles()
    assert list(roles) == ["auditAppenderRole"]
    permissions = block(block(roles["auditAppenderRole"].body, "properties"), "permissions")
    assert sorted(strings(block(permissions, "dataActions"))) == [
        f"{ENTITIES}/add/action",
        f"{ENTITIES}/read",
    ]
    assert strings(block(permissions, "actions")) == []
    assert not re.search(r"delete|update|write|\*", permissions, re.IGNORECASE)


def test_audit_table_is_append_only_for_the_app_and_read_only_for_the_deployer() -> None:
    audit_scope = f"storage::tableService::{audit_table_symbol()}"
    on_audit = {a.role for a in role_assignments() if a.scope == audit_scope}
    assert on_audit == {"auditAppenderRole", STORAGE_TABLE_DATA_READER}
    elsewhere = {a.scope for a in role_assignments() if a.role == "auditAppenderRole"}
    assert elsewhere == {audit_scope}


def test_no_table_role_reaches_beyond_a_single_table() -> None:
    table_roles = {STORAGE_TABLE_DATA_CONTRIBUTOR, STORAGE_TABLE_DATA_READER, "auditAppenderRole"}
    for assignment in role_assignments():
        if assignment.role in table_roles:
            assert re.fullmatch(r"storage::tableService::\w+", assignment.scope), assignment
    contributor_scopes = {
        a.scope for a in role_assignments() if a.role == STORAGE_TABLE_DATA_CONTRIBUTOR
    }
    assert contributor_scopes == {
        "storage::tableService::stateTable",
        "storage::tableService::auditIndexTable",
    }
    account_roles = {a.role for a in role_assignments() if a.scope == "storage"}
    assert account_roles == {STORAGE_BLOB_DATA_OWNER}


def test_service_bus_roles_are_scoped_to_the_queue() -> None:
    sb_roles = {
        string_vars("app/rbac.bicep")[var]
        for var in ("serviceBusDataSenderRoleId", "serviceBusDataReceiverRoleId")
    }
    scopes = {a.scope for a in role_assignments() if a.role in sb_roles}
    assert scopes == {"serviceBus::actionsQueue", "serviceBus::notificationsQueue"}


def test_no_role_grants_owner_contributor_or_data_owner_rights() -> None:
    assignments = role_assignments()
    assert len(assignments) >= 8, "fewer role assignments parsed than declared"
    used = {a.role for a in assignments}
    assert used & set(FORBIDDEN_ROLES) == set()
    for path in INFRA.rglob("*.bicep"):
        found = set(GUID.findall(path.read_text().lower())) & set(FORBIDDEN_ROLES)
        assert found == set(), f"{path.name} mentions {[FORBIDDEN_ROLES[g] for g in found]}"


def test_role_assignment_names_are_guid_of_scope_principal_and_role() -> None:
    for assignment in role_assignments():
        scope, principal, role = assignment.name_args
        assert scope == f"{assignment.scope}.id", assignment
        assert principal in {"managedIdentityPrincipalId", "principalId"}, assignment
        assert role.endswith(("RoleId", "Role.name")), assignment


# --- resources ----------------------------------------------------------------------------


def test_storage_account_refuses_shared_keys_and_public_blobs() -> None:
    account = block(declaration("app/storage.bicep", "storage").body, "properties")
    fields = entries(account)
    assert fields["allowSharedKeyAccess"] == "false"
    assert fields["allowBlobPublicAccess"] == "false"
    assert fields["minimumTlsVersion"] == "'TLS1_2'"
    assert "allowSharedKeyAccess: true" not in bicep("app/storage.bicep")


def test_tables_are_named_as_the_settings_default_them() -> None:
    names = string_vars("app/storage.bicep")
    refs = [
        entries(d.body)["name"] for d in declarations("app/storage.bicep") if d.target == "tables"
    ]
    tables = {names.get(ref, ref.strip("'")) for ref in refs}
    fields = Settings.model_fields
    assert tables == {
        fields["audit_table"].default,
        fields["state_table"].default,
        fields["audit_index_table"].default,
    }


def module_params(symbol: str) -> dict[str, str]:
    return entries(block(declaration("main.bicep", symbol).body, "params"))


def test_queue_deduplicates_and_shares_its_max_delivery_count_with_the_app() -> None:
    queue = entries(block(declaration("app/servicebus.bicep", "queue").body, "properties"))
    assert queue["requiresDuplicateDetection"] == "true"
    assert queue["duplicateDetectionHistoryTimeWindow"] == "'PT10M'"
    assert queue["deadLetteringOnMessageExpiration"] == "true"
    # One value flows: main param -> queue -> queue output -> ACTIONS_MAX_DELIVERIES.
    assert queue["maxDeliveryCount"] == "maxDeliveryCount"
    assert re.search(r"(?m)^param\s+maxDeliveryCount\s+int\b", bicep("app/servicebus.bicep"))
    assert re.search(
        r"(?m)^output\s+maxDeliveryCount\s+int\s*=\s*queue\.properties\.maxDeliveryCount\s*$",
        bicep("app/servicebus.bicep"),
    )
    main_param = module_params("serviceBus")["maxDeliveryCount"]
    assert re.search(rf"(?m)^param\s+{main_param}\s+int\b", bicep("main.bicep"))
    assert module_params("api")["actionsMaxDeliveries"] == "serviceBus.outputs.maxDeliveryCount"
    assert app_settings()["ACTIONS_MAX_DELIVERIES"] == "string(actionsMaxDeliveries)"


def test_service_bus_accepts_entra_identities_only() -> None:
    namespace = declaration("app/servicebus.bicep", "namespace").body
    assert entries(block(namespace, "properties"))["disableLocalAuth"] == "true"
    assert entries(block(namespace, "sku"))["name"] in {"'Standard'", "'Premium'"}


def test_every_located_resource_carries_the_azd_tags() -> None:
    assert re.search(
        r"var\s+tags\s*=\s*\{\s*'azd-env-name':\s*environmentName\s*\}", bicep("main.bicep")
    )
    for path in sorted(INFRA.rglob("*.bicep")):
        name = str(path.relative_to(INFRA))
        for decl in declarations(name):
            if (
                decl.keyword == "resource"
                and not decl.existing
                and "location" in entries(decl.body)
            ):
                assert "tags" in entries(decl.body), f"{name}: {decl.symbol} is untagged"
    site_tags = entries(declaration("app/api.bicep", "functionApp").body)["tags"]
    assert "'azd-service-name': 'api'" in site_tags


def test_outputs_are_upper_case_for_azd() -> None:
    outputs = re.findall(r"(?m)^output\s+(\w+)\s", bicep("main.bicep"))
    assert outputs
    assert [o for o in outputs if not re.fullmatch(r"[A-Z][A-Z0-9_]*", o)] == []
    assert {
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_RESOURCE_GROUP",
        "SERVICE_API_NAME",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "SERVICE_BUS_NAMESPACE",
        "MANAGED_IDENTITY_PRINCIPAL_ID",
    } <= set(outputs)


def test_parameters_file_only_names_parameters_of_main() -> None:
    declared = set(re.findall(r"(?m)^param\s+(\w+)\s", bicep("main.bicep")))
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(values) <= declared
    assert {"environmentName", "location", "principalId"} <= set(values)


def test_azure_yaml_deploys_the_repo_root_as_the_api_function() -> None:
    text = (ROOT / "azure.yaml").read_text()
    service = re.search(r"(?m)^services:\n  api:\n((?:    .*\n)+)", text)
    assert service, "azure.yaml has no `api` service"
    fields = dict(re.findall(r"(?m)^    (\w+):\s*(\S+)", service[1]))
    assert fields == {"project": ".", "language": "python", "host": "function"}


# --- Graph permissions --------------------------------------------------------------------

GRAPH_ADAPTERS = ("graph.py", "graph_subscriptions.py")


def documented_graph_permissions() -> set[str]:
    adapters = ROOT / "shared" / "adapters"
    trees = [ast.parse((adapters / name).read_text()) for name in GRAPH_ADAPTERS]
    nodes = trees + [
        n
        for tree in trees
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    docstrings = "\n".join(filter(None, (ast.get_docstring(n) for n in nodes)))
    return set(re.findall(r"Permission: ([A-Za-z]+(?:\.[A-Za-z]+)*)", docstrings))


FAKE_AZ = """#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
uri = args[args.index("--uri") + 1]
method = args[args.index("--method") + 1]
body = args[args.index("--body") + 1] if "--body" in args else ""
with open(os.environ["AZ_LOG"], "a") as log:
    log.write(method + " " + uri + " " + body + "\\n")
if method == "POST":
    sys.exit(0)
if "(appId=" in uri:
    print("sp-" + uri.split("'")[1])
elif uri.endswith("$select=appRoles"):
    for name in os.environ["AZ_ROLES"].split(","):
        print(name + "\\trole-" + name)
else:
    pass  # no app role assignments yet
"""


def run_grant_script(tmp_path: Path, *flags: str) -> tuple[int, list[str], str]:
    """Run the grant script against a fake `az` that knows every permission of the manifest;
    the permissions it granted, by name."""
    az = tmp_path / "az"
    az.write_text(FAKE_AZ)
    az.chmod(0o755)
    log = tmp_path / "az.log"
    log.write_text("")
    names = [p.name for p in manifest().permissions]
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "AZ_LOG": str(log),
        "AZ_ROLES": ",".join(names),
    }
    done = subprocess.run(
        ["bash", str(INFRA / "grant-graph-permissions.sh"), *flags, PRINCIPAL],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    granted = re.findall(r'"appRoleId": "role-([^"]+)"', log.read_text())
    return done.returncode, granted, done.stderr


PRINCIPAL = "11111111-2222-3333-4444-555555555555"


def test_grant_script_grants_what_the_manifest_lists_for_the_chosen_features(
    tmp_path: Path,
) -> None:
    plain = manifest().grants(["always"], GRAPH_AUDIENCE) | {"Exchange.ManageAsApp"}
    code, granted, stderr = run_grant_script(tmp_path)
    assert code == 0, stderr
    assert set(granted) == plain and len(granted) == len(plain)
    assert "Policy.ReadWrite.ConditionalAccess" not in granted
    assert "Group.Read.All" not in granted

    code, granted, _ = run_grant_script(tmp_path, "--with-watched-groups")
    assert code == 0 and set(granted) == plain | {"Group.Read.All"}
    for flag in ("--with-breakglass", "--with-signin-block"):
        code, granted, _ = run_grant_script(tmp_path, flag)
        assert code == 0 and set(granted) == plain | {"Policy.ReadWrite.ConditionalAccess"}


def test_grant_script_check_mode_grants_nothing_and_fails_on_missing(tmp_path: Path) -> None:
    code, granted, _ = run_grant_script(tmp_path, "--check")
    assert code == 1 and granted == []


def test_grant_script_refuses_unknown_options(tmp_path: Path) -> None:
    code, granted, stderr = run_grant_script(tmp_path, "--with-everything")
    assert code == 2 and granted == [] and "unknown option" in stderr


def test_group_subscriptions_get_group_read_all_per_the_subscription_table() -> None:
    permission = manifest().permission("Group.Read.All")
    assert permission.features == ("watched_groups",)
    assert "GraphWatch.create" in permission.used_by


def test_conditional_access_write_is_granted_only_on_request() -> None:
    write = manifest().permission("Policy.ReadWrite.ConditionalAccess")
    assert "always" not in write.features
    assert set(write.features) == {"breakglass", "signin_block"}


def test_manifest_covers_every_permission_the_adapters_document() -> None:
    documented = documented_graph_permissions()
    assert documented, "no `Permission: X` phrase found in the Graph adapter's docstrings"
    assert documented <= {p.name for p in manifest().for_audience(GRAPH_AUDIENCE)}
    adapter = (ROOT / "shared" / "adapters" / "exchange.py").read_text()
    assert {p.name for p in manifest().for_audience(EXCHANGE_AUDIENCE)} == {"Exchange.ManageAsApp"}
    assert "`Exchange.ManageAsApp`" in adapter


def test_every_operation_the_manifest_names_exists_in_the_adapters() -> None:
    methods: set[str] = set()
    for name in (*GRAPH_ADAPTERS, "exchange.py"):
        tree = ast.parse((ROOT / "shared" / "adapters" / name).read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            methods |= {
                f"{cls.name}.{f.name}"
                for f in cls.body
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            }
    named = {op for p in manifest().permissions for op in p.used_by}
    assert named and named <= methods


def test_grant_script_is_strict_and_looks_up_role_ids_at_run_time() -> None:
    script = (INFRA / "grant-graph-permissions.sh").read_text()
    assert "set -euo pipefail" in script
    assert "/appRoleAssignments" in script
    resource_apps = ["00000003-0000-0000-c000-000000000000", "00000002-0000-0ff1-ce00-000000000000"]
    assert GUID.findall(script) == resource_apps, "only the resource apps' well-known ids"

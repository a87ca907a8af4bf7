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
    assert sorted(roles) == ["auditAnchorAppenderRole", "auditAppenderRole"]
    permissions = block(block(roles["auditAppenderRole"].body, "properties"), "permissions")
    assert sorted(strings(block(permissions, "dataActions"))) == [
        f"{ENTITIES}/add/action",
        f"{ENTITIES}/read",
    ]
    assert strings(block(permissions, "actions")) == []
    assert not re.search(r"delete|update|write|\*", permissions, re.IGNORECASE)


BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"


def test_audit_checkpoints_are_write_once_and_the_app_may_only_read_and_append() -> None:
    permissions = block(
        block(custom_roles()["auditAnchorAppenderRole"].body, "properties"), "permissions"
    )
    assert sorted(strings(block(permissions, "dataActions"))) == [
        f"{BLOBS}/add/action",
        f"{BLOBS}/read",
    ]
    assert not re.search(r"delete|write|\*", permissions, re.IGNORECASE)
    scopes = {a.scope for a in role_assignments() if a.role == "auditAnchorAppenderRole"}
    assert scopes == {"storage::blobService::auditAnchorContainer"}
    storage = (INFRA / "app/storage.bicep").read_text()
    policy = storage[storage.index("resource auditAnchorPolicy 'immutabilityPolicies'") :]
    assert "allowProtectedAppendWrites: true" in policy
    assert "immutabilityPeriodSinceCreationInDays: auditAnchorRetentionDays" in policy
    container = Settings.model_fields["audit_anchor_container"].default
    assert f"var auditAnchorContainerName = '{container}'" in storage


def test_audit_table_is_append_only_for_the_app_and_the_deployer() -> None:
    audit_scope = f"storage::tableService::{audit_table_symbol()}"
    on_audit = {(a.role, a.name_args[1]) for a in role_assignments() if a.scope == audit_scope}
    assert on_audit == {
        ("auditAppenderRole", "managedIdentityPrincipalId"),
        ("auditAppenderRole", "principalId"),
    }
    elsewhere = {a.scope for a in role_assignments() if a.role == "auditAppenderRole"}
    assert elsewhere == {audit_scope}


def test_the_deployer_gets_exactly_what_the_command_lines_audit_and_approvals_need() -> None:
    roles = string_vars("app/rbac.bicep")
    deployer = {(a.scope, a.role) for a in role_assignments() if a.name_args[1] == "principalId"}
    assert deployer == {
        # audit verify/query/export read the chain; an approval appends its record
        (f"storage::tableService::{audit_table_symbol()}", "auditAppenderRole"),
        # filtered queries read the index; appends and `audit reindex` write it
        ("storage::tableService::auditIndexTable", STORAGE_TABLE_DATA_CONTRIBUTOR),
        # approvals and the action ledger live in the state table
        ("storage::tableService::stateTable", STORAGE_TABLE_DATA_CONTRIBUTOR),
        # an approved action is queued
        ("serviceBus::actionsQueue", roles["serviceBusDataSenderRoleId"]),
    }
    conditional = set(
        re.findall(
            r"(?m)^resource\s+(\w+)\s+'Microsoft\.Authorization/roleAssignments@[^']+'\s*=\s*"
            r"if\s*\(!empty\(principalId\)\)",
            bicep("app/rbac.bicep"),
        )
    )
    deployer_symbols = {a.symbol for a in role_assignments() if a.name_args[1] == "principalId"}
    assert deployer_symbols == conditional, "a deployer grant must be skipped without principalId"
    # Nothing can use a reader role any more: the command line appends when it approves.
    assert STORAGE_TABLE_DATA_READER not in bicep("app/rbac.bicep")


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
    assert scopes == {
        "serviceBus::actionsQueue",
        "serviceBus::notificationsQueue",
        "serviceBus::noticesQueue",
    }


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

GRAPH_ADAPTERS = ("graph.py", "graph_subscriptions.py", "mail.py", "comments.py")


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


# --- azd up --no-prompt: parameters, names, hooks ----------------------------------------

# Variables azd itself puts into every environment (azd env new / azd provision).
AZD_PROVIDED = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_PRINCIPAL_ID"}
HOOKS = ROOT / "infra" / "hooks"


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None
    decorators: str


def bicep_params(name: str) -> dict[str, Param]:
    """Every `param` of a Bicep file with its decorators and default (comments stripped)."""
    lines = bicep(name).splitlines()
    statement = re.compile(
        r"^(param|var|resource|module|output|targetScope|extension|import)\b|^\}\s*$"
    )
    found: dict[str, Param] = {}
    for i, line in enumerate(lines):
        if not (m := re.match(r"^param\s+(\w+)\s+(\w+)(?:\s*=\s*(.+))?$", line)):
            continue
        start = i
        while start > 0 and lines[start - 1].strip() and not statement.match(lines[start - 1]):
            start -= 1
        found[m[1]] = Param(m[1], m[2], m[3], "\n".join(lines[start:i]))
    return found


def parameter_values() -> dict[str, str]:
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    return {name: entry["value"] for name, entry in values.items()}


def test_every_parameter_of_main_is_mapped_for_no_prompt() -> None:
    params, values = bicep_params("main.bicep"), parameter_values()
    assert set(values) == set(params), "azd prompts for a parameter the file does not map"
    hook_sets = set(re.findall(r"azd env set (\w+)", (HOOKS / "preprovision.sh").read_text()))
    for name, param in params.items():
        ref = re.fullmatch(r"\$\{(\w+)(?:=([^}]*))?\}", values[name])
        assert ref, f"{name}: {values[name]!r} is not a ${{VAR}} or ${{VAR=default}} reference"
        variable, fallback = ref[1], ref[2]
        if param.default is None:
            # Required: azd or the preprovision hook must provide it, or azd would prompt.
            assert variable in AZD_PROVIDED | hook_sets, f"{name}: nothing sets {variable}"
        elif fallback is not None:
            literal = param.default.strip().strip("'")
            assert fallback == literal, f"{name}: the file's default {fallback!r} != {literal!r}"


def test_secrets_are_secure_validated_and_generated_by_the_hooks() -> None:
    params = bicep_params("main.bicep")
    secret = params["webhookSecret"]
    assert "@secure()" in secret.decorators and "@minLength(32)" in secret.decorators
    assert secret.default is None
    for name in ("notificationUrl", "lifecycleNotificationUrl"):
        assert "@secure()" in params[name].decorators
    assert parameter_values()["webhookSecret"] == "${RESPONDER_WEBHOOK_SECRET}"
    for hook in ("preprovision.sh", "preprovision.ps1"):
        text = (HOOKS / hook).read_text()
        assert "RESPONDER_WEBHOOK_SECRET" in text and "RESPONDER_VAULT_SUFFIX" in text


def test_choices_and_bounds_are_validated_in_bicep() -> None:
    params = bicep_params("main.bicep")
    for name in (
        "principalType",
        "breakglassRestingState",
        "exchangeRuleMode",
        "storageSkuName",
        "graphBaseUrl",
        "instanceMemoryMB",
    ):
        assert "@allowed(" in params[name].decorators, name
    for name in (
        "actionsMaxDeliveries",
        "alertPollLookbackMinutes",
        "maxBodyBytes",
        "maximumInstanceCount",
        "alwaysReadyInstances",
        "httpPerInstanceConcurrency",
    ):
        assert "@minValue(" in params[name].decorators and "@maxValue(" in params[name].decorators
    for name in ("environmentName", "location", "actionsMessageTimeToLive"):
        assert "@minLength(" in params[name].decorators, name


def test_names_are_unique_per_deployment_and_the_vault_survives_azd_down() -> None:
    main = bicep("main.bicep")
    assert re.search(
        r"var resourceToken = toLower\(uniqueString\(subscription\(\)\.id, environmentName, "
        r"location\)\)",
        main,
    )
    vault_name = module_params("keyVault")["name"]
    assert "${resourceToken}" in vault_name and "vaultSuffix" in vault_name
    assert "@maxLength(8)" in bicep_params("main.bicep")["vaultSuffix"].decorators
    # 'kv-' + 13 characters of token + up to 8 of suffix: within Key Vault's 24.
    assert len("kv-") + 13 + 8 <= 24
    vault = entries(block(declaration("app/keyvault.bicep", "vault").body, "properties"))
    assert vault["enablePurgeProtection"] == "true"
    postdown = (HOOKS / "postdown.sh").read_text()
    assert "azd env set RESPONDER_VAULT_SUFFIX" in postdown
    assert "RESPONDER_VAULT_SUFFIX" in (HOOKS / "postdown.ps1").read_text()
    for decl in declarations("main.bicep"):
        if decl.keyword == "module":
            fields = entries(block(decl.body, "params"))
            if "name" in fields:
                value = fields["name"]
                definition = re.search(rf"(?m)^var {re.escape(value)} = (.*)$", main)
                assert "resourceToken" in (definition[1] if definition else value), decl.symbol


def test_azure_yaml_runs_every_hook_on_posix_and_windows() -> None:
    text = (ROOT / "azure.yaml").read_text()
    for event in ("preprovision", "postprovision", "postdown"):
        section = re.search(rf"(?m)^  {event}:\n((?:    .*\n|\s*#.*\n)+)", text)
        assert section, f"azure.yaml has no {event} hook"
        runs = dict(
            re.findall(r"(?m)^    (posix|windows):\n      shell: \w+\n      run: (\S+)", section[1])
        )
        assert set(runs) == {"posix", "windows"}, event
        for script in runs.values():
            assert (ROOT / script).is_file(), script
    postprovision = (HOOKS / "postprovision.sh").read_text()
    assert "grant-graph-permissions.sh" in postprovision
    assert "grant-graph-permissions.sh" in (HOOKS / "postprovision.ps1").read_text()


def test_every_module_parameter_exists_and_every_required_one_is_passed() -> None:
    for decl in declarations("main.bicep"):
        if decl.keyword != "module":
            continue
        target = bicep_params(decl.target)
        passed = set(entries(block(decl.body, "params")))
        assert passed - set(target) == set(), f"{decl.symbol} passes unknown parameters"
        required = {name for name, p in target.items() if p.default is None}
        assert required - passed == set(), f"{decl.symbol} misses required parameters"


def test_every_role_id_carries_a_comment_naming_the_role() -> None:
    known = {
        STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
        STORAGE_TABLE_DATA_CONTRIBUTOR: "Storage Table Data Contributor",
        "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender",
        "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Azure Service Bus Data Receiver",
        "a638d3c7-ab3a-418d-83e6-5f17a39d4fde": "Azure Event Hubs Data Receiver",
        "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
        "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
        "3e150937-b8fe-4cfb-8069-0eaf05ecd056": "Microsoft Sentinel Responder",
        # Well-known application ids rather than roles.
        "04b07795-8ddb-461a-bbee-02f9e1bf7b46": "Azure CLI",
    }
    seen = 0
    for path in sorted(INFRA.rglob("*.bicep")):
        for line in path.read_text().splitlines():
            for guid in GUID.findall(line.lower()):
                seen += 1
                comment = line.split("//", 1)[1].strip() if "//" in line else ""
                if not comment:  # the comment may sit on the line above
                    lines = path.read_text().splitlines()
                    above = lines[lines.index(line) - 1].strip()
                    comment = above.removeprefix("//").strip() if above.startswith("//") else ""
                assert guid in known, f"{path.name}: unknown id {guid}"
                assert known[guid] in comment, (
                    f"{path.name}: {guid} lacks the comment {known[guid]!r}"
                )
    assert seen >= 8


def service_bus_functions() -> set[str]:
    found = set()
    for path in sorted((ROOT / "functions").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
                for deco in node.decorator_list:
                    if (
                        isinstance(deco, ast.Call)
                        and isinstance(deco.func, ast.Attribute)
                        and deco.func.attr == "service_bus_queue_trigger"
                    ):
                        found.add(node.name)
    return found


def test_http_and_every_service_bus_trigger_are_kept_warm() -> None:
    api = bicep("app/api.bicep")
    groups = re.search(r"(?m)^var alwaysReadyGroups = \[\n(.*?)^\]", api, re.DOTALL)
    assert groups
    assert set(strings(groups[1])) == {"http"} | {f"function:{n}" for n in service_bus_functions()}
    assert service_bus_functions() == {"execute_action", "process_notification", "send_notice"}
    scale = block(
        block(declaration("app/api.bicep", "functionApp").body, "functionAppConfig"),
        "scaleAndConcurrency",
    )
    assert "instanceCount: alwaysReadyInstances" in scale
    assert "name: group" in scale
    assert bicep_params("main.bicep")["alwaysReadyInstances"].default == "1"
    assert module_params("api")["alwaysReadyInstances"] == "alwaysReadyInstances"
    assert module_params("api")["instanceMemoryMB"] == "instanceMemoryMB"
    # One instance takes several webhook POSTs at once (bench/storm.py measures 1 and 4).
    assert re.search(
        r"triggers: \{\s*http: \{\s*perInstanceConcurrency: httpPerInstanceConcurrency", scale
    )
    assert bicep_params("main.bicep")["httpPerInstanceConcurrency"].default == "4"
    assert module_params("api")["httpPerInstanceConcurrency"] == "httpPerInstanceConcurrency"


def test_scale_out_is_bounded_the_same_in_main_and_the_app() -> None:
    main, app = bicep_params("main.bicep"), bicep_params("app/api.bicep")
    for name in (
        "maximumInstanceCount",
        "instanceMemoryMB",
        "alwaysReadyInstances",
        "httpPerInstanceConcurrency",
    ):
        assert main[name].decorators.split() == app[name].decorators.split() or (
            re.sub(r"@description\(.*\)", "", main[name].decorators).split()
            == re.sub(r"@description\(.*\)", "", app[name].decorators).split()
        ), name
    assert "@maxValue(100)" in main["maximumInstanceCount"].decorators
    raw = (INFRA / "main.bicep").read_text()
    assert "throttl" in raw[: raw.index("param maximumInstanceCount")].split("\n\n")[-1]
    assert "CPU" in raw[: raw.index("param instanceMemoryMB")].split("\n\n")[-1]


# --- the API's app registration -----------------------------------------------------------


def test_the_api_registration_issues_v2_tokens_with_the_roles_the_code_checks() -> None:
    from shared.identity import ROLE_ACT, ROLE_APPROVE, ROLE_AUDIT_READ

    registration = bicep("app/apiregistration.bicep")
    assert re.search(r"(?m)^extension microsoftGraphV1$", registration)
    config = json.loads((INFRA / "bicepconfig.json").read_text())
    assert config["extensions"]["microsoftGraphV1"].startswith(
        "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:"
    )
    app = declaration("app/apiregistration.bicep", "app")
    assert app.target == "Microsoft.Graph/applications@v1.0"
    api = block(app.body, "api")
    assert entries(api)["requestedAccessTokenVersion"] == "2"
    role_list = re.search(r"(?m)^var appRoles = \[\n(.*?)^\]", registration, re.DOTALL)
    assert role_list
    roles = set(re.findall(r"value: '([\w.]+)'", role_list[1]))
    assert roles == {ROLE_ACT, ROLE_APPROVE, ROLE_AUDIT_READ}
    preauthorized = block(api, "preAuthorizedApplications")
    assert "appId: azureCliAppId" in preauthorized and "delegatedPermissionIds" in preauthorized
    assert "var azureCliAppId = '04b07795-8ddb-461a-bbee-02f9e1bf7b46'" in registration
    uris = block(declaration("app/apiregistration.bicep", "appIdentifier").body, "identifierUris")
    assert strings(uris) == ["api://${app.appId}"]
    principal = declaration("app/apiregistration.bicep", "servicePrincipal")
    assert principal.target == "Microsoft.Graph/servicePrincipals@v1.0"
    # The app accepts exactly this registration's tokens.
    assert "apiRegistration!.outputs.appId" in module_params("api")["authAudience"]


# --- the docs match the infrastructure ----------------------------------------------------

DOCS = ROOT / "docs"


def test_permissions_doc_names_every_granted_permission_and_every_role_with_a_source() -> None:
    text = (DOCS / "permissions.md").read_text()
    for permission in {p.name for p in manifest().permissions}:
        assert f"`{permission}`" in text, permission
    role_names = re.findall(r"(?m)^var \w+RoleId = '[^']+' // (.+)$", bicep_raw("app/rbac.bicep"))
    assert role_names
    for name in role_names:
        assert name.strip() in text, name
    for role in ("Responder.Act", "Responder.Approve", "Audit.Read"):
        assert f"`{role}`" in text
    assert text.count("https://learn.microsoft.com/") >= 10
    assert "New-ManagementRoleAssignment -App" not in (ROOT / "README.md").read_text()


def bicep_raw(name: str) -> str:
    return (INFRA / name).read_text()


def test_the_readme_points_to_the_deployment_docs_and_every_example() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Deploy" in readme and "azd up --no-prompt" in readme
    for doc in ("deploy.md", "permissions.md", "runbook.md", "runbook.de.md"):
        assert f"(docs/{doc})" in readme
        assert (DOCS / doc).is_file()
    assert "(docs/examples/)" in readme


def test_every_example_alert_is_accepted_and_plans_an_action() -> None:
    from shared.config import PolicySettings
    from shared.ingest import normalize
    from shared.policy import Guards, Playbook, Policy

    settings = PolicySettings.from_env({})
    policy = Policy(Playbook.load(settings.playbook_path), Guards.from_settings(settings))
    examples = sorted((DOCS / "examples").glob("*.json"))
    assert len(examples) >= 3
    for path in examples:
        plans = [policy.plan(alert) for alert in normalize(json.loads(path.read_text()))]
        decisions = {str(a.decision) for plan in plans for a in plan.actions}
        assert "execute" in decisions, path.name

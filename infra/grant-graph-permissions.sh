#!/usr/bin/env bash
# Grants the responder's managed identity the application permissions its adapters document,
# and nothing else: Microsoft Graph (shared/adapters/graph.py, graph_subscriptions.py) and Office 365 Exchange Online
# (shared/adapters/exchange.py).
#
# Bicep cannot assign Graph app roles to a managed identity without the Microsoft Graph Bicep
# extension, so this runs once per environment after `azd provision`, signed in with `az login`
# as someone allowed to grant application permissions (Privileged Role Administrator or Global
# Administrator). It is idempotent: permissions already granted are skipped.
#
# Usage:
#   infra/grant-graph-permissions.sh [--check] [--with-breakglass] [--with-signin-block]
#                                    [--with-watched-groups] [--with-alert-comments]
#                                    [MANAGED_IDENTITY_PRINCIPAL_ID]
#
#   --check                only report; exit 1 if a permission is missing, grant nothing.
#   --with-breakglass      also grant what emergency access needs (BREAKGLASS_ACCOUNTS set):
#                          the Conditional Access write permission for the policy exclusions.
#   --with-signin-block    also grant what playbooks with `signin_block = true` need (the same
#                          permission, for named locations).
#   --with-watched-groups  also grant Group.Read.All, which Graph requires for change
#                          notification subscriptions on groups (WATCHED_GROUPS set).
#   --with-alert-comments  also grant SecurityAlert.ReadWrite.All to comment on alerts_v2
#                          alerts (NOTICE_ALERT_COMMENTS=true).
#   Mail.Send is never granted here: as an Entra application permission it reaches every
#   mailbox. E-mailed notices get it from Exchange instead, scoped to the sender mailbox
#   (infra/grant-notice-mailbox.ps1, docs/notices.md).
#   Policy.ReadWrite.ConditionalAccess can rewrite every CA policy of the tenant, so it is
#   granted only on request.
#   The principal id defaults to $MANAGED_IDENTITY_PRINCIPAL_ID, then to the azd environment's
#   MANAGED_IDENTITY_PRINCIPAL_ID output.
#
# What is granted comes from shared/permissions.json, the manifest the simulated tenant and
# `responder doctor` read too. Acting on accounts that hold admin roles needs an Entra role for
# the identity as well, and Exchange.ManageAsApp needs an Exchange role for the app that holds
# transport rule management; see the README (`responder doctor` checks both).
set -euo pipefail

readonly GRAPH_APP_ID="00000003-0000-0000-c000-000000000000"
readonly EXCHANGE_APP_ID="00000002-0000-0ff1-ce00-000000000000"
readonly GRAPH="https://graph.microsoft.com/v1.0"
MANIFEST="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/shared/permissions.json"
readonly MANIFEST

die() {
  echo "grant-graph-permissions: $*" >&2
  exit 2
}

check_only=false
features=(always)
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --check) check_only=true ;;
    --with-breakglass) features+=(breakglass) ;;
    --with-signin-block) features+=(signin_block) ;;
    --with-watched-groups) features+=(watched_groups) ;;
    --with-alert-comments) features+=(alert_comments) ;;
    *) die "unknown option $1" ;;
  esac
  shift
done

# permissions_of APP_ID: the manifest's permissions of that resource app for the chosen
# features, one per line.
permissions_of() {
  python3 - "$MANIFEST" "$1" "${features[@]}" <<'PY'
import json
import sys

manifest, app_id, *features = sys.argv[1:]
with open(manifest, encoding="utf-8") as source:
    resources = json.load(source)["resources"]
for resource in resources:
    if resource["app_id"] == app_id:
        for permission in resource["permissions"]:
            if set(permission["features"]) & set(features):
                print(permission["name"])
PY
}

principal_id="${1:-${MANAGED_IDENTITY_PRINCIPAL_ID:-}}"
if [[ -z "$principal_id" ]] && command -v azd >/dev/null 2>&1; then
  principal_id="$(azd env get-value MANAGED_IDENTITY_PRINCIPAL_ID 2>/dev/null || true)"
fi
[[ -n "$principal_id" ]] || die "no principal id: pass one or set MANAGED_IDENTITY_PRINCIPAL_ID"
[[ "$principal_id" =~ ^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$ ]] ||
  die "not an object id: $principal_id"
command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"

missing=0

# grant APP_ID PERMISSION...: assign the resource app's application permissions to the identity.
grant() {
  local app_id="$1"
  shift
  local sp_id roles assigned role_id permission extra
  sp_id="$(az rest --method GET \
    --uri "$GRAPH/servicePrincipals(appId='$app_id')" \
    --query id --output tsv)"
  [[ -n "$sp_id" ]] || die "no service principal for app $app_id in this tenant"

  # "<permission>\t<app role id>" for every application permission, looked up by value so no
  # role id is hard-coded.
  roles="$(az rest --method GET \
    --uri "$GRAPH/servicePrincipals/$sp_id?\$select=appRoles" \
    --query "appRoles[?contains(allowedMemberTypes, 'Application')].[value, id]" --output tsv)"
  assigned="$(az rest --method GET \
    --uri "$GRAPH/servicePrincipals/$principal_id/appRoleAssignments" \
    --query "value[?resourceId=='$sp_id'].appRoleId" --output tsv)"

  local wanted_role_ids=()
  for permission in "$@"; do
    role_id="$(awk -F '\t' -v permission="$permission" '$1 == permission { print $2 }' <<<"$roles")"
    [[ -n "$role_id" ]] || die "app $app_id has no application permission named $permission"
    wanted_role_ids+=("$role_id")

    if grep -qxF "$role_id" <<<"$assigned"; then
      echo "already granted: $permission"
      continue
    fi
    if [[ "$check_only" == true ]]; then
      echo "missing: $permission"
      missing=1
      continue
    fi
    az rest --method POST \
      --uri "$GRAPH/servicePrincipals/$principal_id/appRoleAssignments" \
      --headers "Content-Type=application/json" \
      --body "{\"principalId\": \"$principal_id\", \"resourceId\": \"$sp_id\", \"appRoleId\": \"$role_id\"}" \
      --output none
    echo "granted: $permission"
  done

  # Least privilege cuts both ways: report permissions nobody asked for, but leave their
  # removal to a person.
  while IFS= read -r role_id; do
    [[ -n "$role_id" ]] || continue
    if ! printf '%s\n' "${wanted_role_ids[@]}" | grep -qxF "$role_id"; then
      extra="$(awk -F '\t' -v id="$role_id" '$2 == id { print $1 }' <<<"$roles")"
      echo "warning: also holds ${extra:-app role $role_id}, which the responder does not need" >&2
    fi
  done <<<"$assigned"
}

[[ -r "$MANIFEST" ]] || die "cannot read the permission manifest $MANIFEST"
command -v python3 >/dev/null 2>&1 || die "python3 is required to read the manifest"
mapfile -t graph_permissions < <(permissions_of "$GRAPH_APP_ID")
mapfile -t exchange_permissions < <(permissions_of "$EXCHANGE_APP_ID")
((${#graph_permissions[@]} > 0 && ${#exchange_permissions[@]} > 0)) ||
  die "the manifest names no permissions for Graph or Exchange"

grant "$GRAPH_APP_ID" "${graph_permissions[@]}"
grant "$EXCHANGE_APP_ID" "${exchange_permissions[@]}"

exit "$missing"

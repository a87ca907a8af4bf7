#!/bin/sh
# azd postprovision hook: grants the managed identity its Microsoft Graph and Exchange Online
# application permissions with infra/grant-graph-permissions.sh (which holds the list). That needs
# a Privileged Role Administrator or Global Administrator; a deployer without the role gets the
# command to hand over instead, and the deployment stands (the app starts in dry-run).
#
#   RESPONDER_GRANT_OPTIONS   extra options for the script, e.g. "--with-breakglass"
#   RESPONDER_REQUIRE_GRANTS  "true": fail the provisioning when the grant fails
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
script="$here/../grant-graph-permissions.sh"
principal="${MANAGED_IDENTITY_PRINCIPAL_ID:-}"
options="${RESPONDER_GRANT_OPTIONS:-}"

if [ -z "$principal" ]; then
  echo "postprovision: MANAGED_IDENTITY_PRINCIPAL_ID is not in the azd environment" >&2
  exit 1
fi

# shellcheck disable=SC2086 # the options are words on purpose
if bash "$script" $options "$principal"; then
  echo "postprovision: Graph and Exchange application permissions granted"
else
  cat >&2 <<MESSAGE
postprovision: the application permissions could not be granted with your sign-in.
Hand this to a Privileged Role Administrator or Global Administrator of the tenant:

    az login --tenant ${AZURE_TENANT_ID:-<tenant id>}
    bash infra/grant-graph-permissions.sh $options $principal

and to an Exchange administrator the Exchange role step in docs/permissions.md.
MESSAGE
  if [ "${RESPONDER_REQUIRE_GRANTS:-false}" = "true" ]; then
    exit 1
  fi
fi
echo "postprovision: Exchange needs a role for the app as well; see docs/permissions.md (Exchange Online)"

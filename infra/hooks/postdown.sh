#!/bin/sh
# azd postdown hook: the deleted Key Vault keeps its name for 90 days (purge protection), so the
# next `azd up` in this environment must use another. The webhook secret stays.
set -eu
azd env set RESPONDER_VAULT_SUFFIX "$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')" >/dev/null
echo "postdown: the next deployment gets a new Key Vault name (the deleted one is kept 90 days)"

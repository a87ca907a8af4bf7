#!/bin/sh
# azd preprovision hook: generates the values nobody should type into the azd environment when
# they are absent, and keeps them there (`azd env get-values` shows them; `.azure/` is
# git-ignored and never deployed). Re-running changes nothing that is already set.
set -eu

random_hex() {
  # $1 bytes of randomness as lowercase hex.
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

current() {
  azd env get-value "$1" 2>/dev/null || true
}

secret="$(current RESPONDER_WEBHOOK_SECRET)"
if [ -z "$secret" ]; then
  azd env set RESPONDER_WEBHOOK_SECRET "$(random_hex 32)" >/dev/null
  echo "preprovision: generated RESPONDER_WEBHOOK_SECRET (64 hex characters) in the azd environment"
elif [ "${#secret}" -lt 32 ]; then
  echo "preprovision: RESPONDER_WEBHOOK_SECRET is shorter than 32 characters; unset it to have one generated" >&2
  exit 1
fi

if [ -z "$(current RESPONDER_VAULT_SUFFIX)" ]; then
  azd env set RESPONDER_VAULT_SUFFIX "$(random_hex 3)" >/dev/null
  echo "preprovision: generated RESPONDER_VAULT_SUFFIX for the Key Vault name"
fi

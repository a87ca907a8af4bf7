# azd preprovision hook (Windows): the same as preprovision.sh. Generates the webhook secret and
# the Key Vault suffix into the azd environment when absent; re-running changes nothing set.
$ErrorActionPreference = 'Stop'

function Get-RandomHex([int] $Bytes) {
  $buffer = [byte[]]::new($Bytes)
  [System.Security.Cryptography.RandomNumberGenerator]::Fill($buffer)
  return -join ($buffer | ForEach-Object { $_.ToString('x2') })
}

function Get-EnvValue([string] $Name) {
  $value = azd env get-value $Name 2>$null
  if ($LASTEXITCODE -ne 0) { return '' }
  return "$value"
}

$secret = Get-EnvValue 'RESPONDER_WEBHOOK_SECRET'
if ($secret -eq '') {
  azd env set RESPONDER_WEBHOOK_SECRET (Get-RandomHex 32) | Out-Null
  Write-Host 'preprovision: generated RESPONDER_WEBHOOK_SECRET (64 hex characters) in the azd environment'
} elseif ($secret.Length -lt 32) {
  Write-Error 'preprovision: RESPONDER_WEBHOOK_SECRET is shorter than 32 characters; unset it to have one generated'
  exit 1
}

if ((Get-EnvValue 'RESPONDER_VAULT_SUFFIX') -eq '') {
  azd env set RESPONDER_VAULT_SUFFIX (Get-RandomHex 3) | Out-Null
  Write-Host 'preprovision: generated RESPONDER_VAULT_SUFFIX for the Key Vault name'
}

# azd postprovision hook (Windows): the same as postprovision.sh. The grant script is bash (Git
# for Windows or WSL provides it); without bash, or without the admin role, it prints what to
# hand to a Privileged Role Administrator. RESPONDER_GRANT_OPTIONS and RESPONDER_REQUIRE_GRANTS
# work as in postprovision.sh.
$ErrorActionPreference = 'Stop'

$script = Join-Path $PSScriptRoot '..' 'grant-graph-permissions.sh'
$principal = $env:MANAGED_IDENTITY_PRINCIPAL_ID
$options = @()
if ($env:RESPONDER_GRANT_OPTIONS) { $options = $env:RESPONDER_GRANT_OPTIONS -split '\s+' }

if (-not $principal) {
  Write-Error 'postprovision: MANAGED_IDENTITY_PRINCIPAL_ID is not in the azd environment'
  exit 1
}

$granted = $false
if (Get-Command bash -ErrorAction SilentlyContinue) {
  & bash $script @options $principal
  $granted = ($LASTEXITCODE -eq 0)
}

if ($granted) {
  Write-Host 'postprovision: Graph and Exchange application permissions granted'
} else {
  $tenant = if ($env:AZURE_TENANT_ID) { $env:AZURE_TENANT_ID } else { '<tenant id>' }
  Write-Warning @"
postprovision: the application permissions could not be granted with your sign-in (or bash is
missing). Hand this to a Privileged Role Administrator or Global Administrator of the tenant:

    az login --tenant $tenant
    bash infra/grant-graph-permissions.sh $($options -join ' ') $principal

and to an Exchange administrator the Exchange role step in docs/permissions.md.
"@
  if ($env:RESPONDER_REQUIRE_GRANTS -eq 'true') { exit 1 }
}
Write-Host 'postprovision: Exchange needs a role for the app as well; see docs/permissions.md (Exchange Online)'

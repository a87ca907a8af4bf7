# Gives the responder's managed identity the Exchange Online role its IP blocks need: the
# "Transport Rules" management role, through a custom role group whose member is the identity's
# service principal. This is Microsoft's documented route for app-only access ("Assign custom
# Exchange Online role groups to the application using service principals" in
# https://learn.microsoft.com/powershell/exchange/app-only-auth-powershell-v2). Exchange
# Administrator (an Entra role) works as well but reaches far beyond transport rules.
#
# Run once per tenant by an Exchange administrator, in PowerShell 7 with the
# ExchangeOnlineManagement module (v3, REST mode), after infra/grant-graph-permissions.sh granted
# Exchange.ManageAsApp:
#
#   ./infra/grant-exchange-role.ps1 -AppId <MANAGED_IDENTITY_CLIENT_ID> -ObjectId <MANAGED_IDENTITY_PRINCIPAL_ID>
#
# Both values are outputs of the deployment (`azd env get-values`). Re-running changes nothing.
param(
  [Parameter(Mandatory)] [string] $AppId,
  [Parameter(Mandatory)] [string] $ObjectId,
  [string] $RoleGroup = 'M365 Responder Transport Rules'
)
$ErrorActionPreference = 'Stop'

Connect-ExchangeOnline -ShowBanner:$false

$principal = Get-ServicePrincipal -Identity $AppId -ErrorAction SilentlyContinue
if (-not $principal) {
  $principal = New-ServicePrincipal -AppId $AppId -ServiceId $ObjectId -DisplayName 'M365 Responder'
}

if (-not (Get-RoleGroup -Identity $RoleGroup -ErrorAction SilentlyContinue)) {
  New-RoleGroup -Name $RoleGroup -Roles 'Transport Rules' `
    -Description 'M365 Responder: reads and writes its own IP block transport rules.' | Out-Null
}

$members = Get-RoleGroupMember -Identity $RoleGroup | ForEach-Object { $_.Name }
if ($members -notcontains $principal.Name) {
  Add-RoleGroupMember -Identity $RoleGroup -Member $principal.Identity
}
Write-Host "Exchange role group '$RoleGroup' (Transport Rules) holds the responder's identity."

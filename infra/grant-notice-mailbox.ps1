# Lets the responder's managed identity send e-mailed notices from one mailbox, and from no
# other: Exchange Online RBAC for Applications gives its service principal the role
# "Application Mail.Send" with a management scope that holds only NOTICE_MAIL_SENDER
# (https://learn.microsoft.com/exchange/permissions-exo/application-rbac). Mail.Send is never
# granted in Entra ID: an Entra grant reaches every mailbox, and Exchange scopes cannot narrow
# it (the two add up). Application access policies, the older way, are not used: Microsoft asks
# that no new ones be created (New-ApplicationAccessPolicy reference).
#
# Run once per tenant by an Exchange administrator (Organization Management), in PowerShell 7
# with the ExchangeOnlineManagement module (v3):
#
#   ./infra/grant-notice-mailbox.ps1 -AppId <MANAGED_IDENTITY_CLIENT_ID> -ObjectId <MANAGED_IDENTITY_PRINCIPAL_ID> -Mailbox responder@contoso.com
#
# Re-running changes nothing. Test-ServicePrincipalAuthorization shows the result.
param(
  [Parameter(Mandatory)] [string] $AppId,
  [Parameter(Mandatory)] [string] $ObjectId,
  [Parameter(Mandatory)] [string] $Mailbox,
  [string] $ScopeName = 'M365 Responder notice sender'
)
$ErrorActionPreference = 'Stop'

Connect-ExchangeOnline -ShowBanner:$false

$principal = Get-ServicePrincipal -Identity $AppId -ErrorAction SilentlyContinue
if (-not $principal) {
  $principal = New-ServicePrincipal -AppId $AppId -ServiceId $ObjectId -DisplayName 'M365 Responder'
}

$address = (Get-Mailbox -Identity $Mailbox).PrimarySmtpAddress
if (-not (Get-ManagementScope -Identity $ScopeName -ErrorAction SilentlyContinue)) {
  New-ManagementScope -Name $ScopeName -RecipientRestrictionFilter "PrimarySmtpAddress -eq '$address'" | Out-Null
}

$assigned = Get-ManagementRoleAssignment -Role 'Application Mail.Send' -ErrorAction SilentlyContinue |
  Where-Object { $_.RoleAssigneeName -eq $principal.Identity -and $_.CustomResourceScope -eq $ScopeName }
if (-not $assigned) {
  New-ManagementRoleAssignment -App $principal.AppId -Role 'Application Mail.Send' -CustomResourceScope $ScopeName | Out-Null
}
Test-ServicePrincipalAuthorization -Identity $principal.AppId -Resource $address |
  Format-Table RoleName, GrantedPermissions, AllowedResourceScope, InScope

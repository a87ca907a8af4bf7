// Microsoft Sentinel Responder for the app's identity on the one workspace whose incidents get
// comments (PUT .../incidents/{id}/comments/{id}); deployed into the workspace's resource group,
// and only when SENTINEL_WORKSPACE_ID is given. Responder (not Contributor): it manages
// incidents and their comments, never analytics rules or automation.
param managedIdentityPrincipalId string
param workspaceName string

// Built-in role id: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
var sentinelResponderRoleId = '3e150937-b8fe-4cfb-8069-0eaf05ecd056' // Microsoft Sentinel Responder

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource sentinelResponder 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, managedIdentityPrincipalId, sentinelResponderRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', sentinelResponderRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

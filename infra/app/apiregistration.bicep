// The HTTP API's app registration in Microsoft Entra ID, through the Microsoft Graph Bicep
// extension (https://learn.microsoft.com/graph/templates/bicep/reference/applications?view=graph-bicep-1.0).
// The app validates tokens itself (shared/identity.py): v2.0 tokens only, audience = this
// registration's client id, app roles in the `roles` claim.
extension microsoftGraphV1

@description('Stable key of the registration: a redeploy updates it instead of creating another.')
param uniqueName string

param displayName string

@description('Object id of the deployer, made owner so they can assign the app roles. Empty: no owner.')
param ownerId string = ''

// Pre-authorized so engineers get tokens with
// `az account get-access-token --scope <identifier URI>/.default` without a consent prompt.
var azureCliAppId = '04b07795-8ddb-461a-bbee-02f9e1bf7b46' // Azure CLI (well-known client id)

// Ids are derived from the unique name so a redeploy keeps them (changing the id of an app
// role would orphan every assignment of it).
var accessScopeId = guid(uniqueName, 'user_impersonation')
var appRoles = [
  {
    value: 'Responder.Act'
    displayName: 'Request containment actions'
    description: 'Request actions through POST /api/actions and read their state.'
  }
  {
    value: 'Responder.Approve'
    displayName: 'Approve held actions'
    description: 'Approve or reject actions held for a second engineer (four eyes).'
  }
  {
    value: 'Audit.Read'
    displayName: 'Read the audit trail'
    description: 'Query, export and verify the audit trail.'
  }
]

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  owners: {
    relationships: empty(ownerId) ? [] : [
      ownerId
    ]
  }
  api: {
    // The code accepts only v2.0 tokens; a new registration would issue v1.0 tokens otherwise.
    requestedAccessTokenVersion: 2
    oauth2PermissionScopes: [
      {
        id: accessScopeId
        value: 'user_impersonation'
        type: 'Admin'
        isEnabled: true
        adminConsentDisplayName: 'Call M365 Responder as the signed-in engineer'
        adminConsentDescription: 'Lets the client call the M365 Responder API as the signed-in engineer; what the engineer may do is decided by their app roles.'
      }
    ]
    preAuthorizedApplications: [
      {
        appId: azureCliAppId
        delegatedPermissionIds: [
          accessScopeId
        ]
      }
    ]
  }
  appRoles: [
    for role in appRoles: {
      id: guid(uniqueName, role.value)
      value: role.value
      displayName: role.displayName
      description: role.description
      allowedMemberTypes: [
        'User'
        'Application'
      ]
      isEnabled: true
    }
  ]
}

// The identifier URI names the client id, which exists only once the application does: the same
// registration (same uniqueName) is declared a second time with it.
resource appIdentifier 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: app.uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  identifierUris: [
    'api://${app.appId}'
  ]
  api: app.api
  appRoles: app.appRoles
}

// The enterprise application: app roles are assigned to engineers here, and only assigned users
// and apps get tokens for the API.
resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: appIdentifier.appId
  appRoleAssignmentRequired: true
}

output appId string = appIdentifier.appId
output identifierUri string = 'api://${appIdentifier.appId}'
output servicePrincipalId string = servicePrincipal.id

// Holds the alert webhook's shared secret. The app reads it through a Key Vault reference, so the
// value never appears in the app's configuration or in deployment outputs.
param location string = resourceGroup().location
param tags object = {}
param name string
param webhookSecretName string = 'responder-webhook-secret'

@secure()
@minLength(32)
param webhookSecret string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Azure RBAC instead of access policies: one permission model for the whole deployment.
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
  }

  resource webhook 'secrets' = {
    name: webhookSecretName
    properties: {
      value: webhookSecret
      contentType: 'text/plain'
    }
  }
}

output name string = vault.name
// A URI without a version, so a rotated secret is picked up; it is not the secret itself.
#disable-next-line outputs-should-not-contain-secrets
output webhookSecretUri string = vault::webhook.properties.secretUri

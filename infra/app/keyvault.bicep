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
    // Purge protection: a deleted vault (and the webhook secret in it) stays recoverable for the
    // whole retention period and nobody, an attacker with Owner rights included, can purge it
    // early. The price is that its name stays taken for those 90 days, also after `azd down`
    // (whose --purge cannot purge it): main.bicep therefore makes the name unique per deployment
    // with a suffix the azd hooks renew after `azd down`.
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

// M365 Responder: one resource group holding the function app and everything it talks to.
// Deployed by `azd provision`; Graph permissions are granted afterwards by
// infra/grant-graph-permissions.sh, which Bicep cannot do for a managed identity.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; seeds every resource name and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the deploying user or principal, granted read access to the audit trail. Empty: nobody.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Plan and audit every action without executing it. Keep true until the playbook and the protected identities are reviewed.')
param dryRun bool = true

@description('Comma-separated object ids or UPNs that are never disabled: break-glass accounts, VIPs.')
param protectedIdentities string = ''

@description('Own and partner networks (comma-separated CIDR) that are never blocked.')
param ipAllowlist string = ''

@description('Object ids of the emergency access (break-glass) accounts, comma-separated: never disabled, activated and health-checked by the app.')
param breakglassAccounts string = ''

@allowed([
  'enabled'
  'disabled'
])
@description('State emergency accounts return to when deactivated: enabled (and monitored, as Microsoft advises) or disabled.')
param breakglassRestingState string = 'enabled'

@allowed([
  'Enforce'
  'Audit'
])
@description('Mode of the IP block transport rules: Audit lets Exchange only log what they match.')
param exchangeRuleMode string = 'Enforce'

@description('NCRONTAB schedule of the sweep that lifts expired IP blocks, in UTC.')
param ipBlockSweepSchedule string = '0 */5 * * * *'

@description('Client id of the API registration (access tokens v2.0) whose app roles (Responder.Act, Responder.Approve, Audit.Read) engineers are assigned; empty leaves the HTTP API closed.')
param authAudience string = ''

@description('Object ids of privileged or role-assignable groups, comma-separated: a new member raises an alert.')
param watchedGroups string = ''

@description('Watch every user: new and re-enabled accounts during an active incident raise an alert.')
param watchAllUsers bool = false

@secure()
@description('https://<app>/api/notifications?code=<function key of notify_changes>; empty until the app exists (no subscriptions are kept).')
param notificationUrl string = ''

@secure()
@description('https://<app>/api/notifications/lifecycle?code=<function key of notify_lifecycle>.')
param lifecycleNotificationUrl string = ''

@description('NCRONTAB schedule of the timer that creates and renews the change notification subscriptions, in UTC.')
param subscriptionRenewSchedule string = '0 */30 * * * *'

@secure()
@minLength(32)
@description('Shared secret the alert webhook expects in X-Responder-Key; stored in Key Vault only.')
param webhookSecret string

@minValue(1)
@maxValue(2000)
@description('Deliveries of one action before Service Bus dead-letters it; the app audits the last one as failed.')
param actionsMaxDeliveries int = 10

@description('Longest an action may wait in the queue; it must outlast the longest scheduled revert.')
param actionsMessageTimeToLive string = 'P14D'

@description('NCRONTAB schedule of the alerts_v2 poller, in UTC (Flex Consumption has no WEBSITE_TIME_ZONE).')
param alertPollSchedule string = '0 */1 * * * *'

@minValue(1)
@maxValue(10080)
param alertPollLookbackMinutes int = 60

@minValue(1024)
@maxValue(33554432)
param maxBodyBytes int = 1048576

param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

@minValue(1)
@maxValue(1000)
@description('Upper bound of instances; it also bounds how hard the app can hit Graph throttling.')
param maximumInstanceCount int = 40

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = '${abbrs.webSitesFunctions}responder-${resourceToken}'
var deploymentStorageContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
  }
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.managedIdentityUserAssignedIdentities}responder-${resourceToken}'
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    skuName: storageSkuName
    deploymentStorageContainerName: deploymentStorageContainerName
  }
}

module serviceBus 'app/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.serviceBusNamespaces}${resourceToken}'
    maxDeliveryCount: actionsMaxDeliveries
    messageTimeToLive: actionsMessageTimeToLive
  }
}

module eventHub 'app/eventhub.bicep' = {
  name: 'eventhub'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.eventHubNamespaces}${resourceToken}'
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    webhookSecret: webhookSecret
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    managedIdentityPrincipalId: identity.outputs.principalId
    principalId: principalId
    principalType: principalType
    storageAccountName: storage.outputs.name
    auditTableName: storage.outputs.auditTableName
    stateTableName: storage.outputs.stateTableName
    auditIndexTableName: storage.outputs.auditIndexTableName
    serviceBusNamespaceName: serviceBus.outputs.name
    actionsQueueName: serviceBus.outputs.queueName
    notificationsQueueName: serviceBus.outputs.notificationsQueueName
    eventHubNamespaceName: eventHub.outputs.name
    eventHubName: eventHub.outputs.hubName
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  // The app must not start before its roles exist: an unresolved Key Vault reference would
  // leave the literal reference text in RESPONDER_WEBHOOK_SECRET.
  dependsOn: [
    rbac
  ]
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    maximumInstanceCount: maximumInstanceCount
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: storage.outputs.deploymentContainerName
    auditTableName: storage.outputs.auditTableName
    stateTableName: storage.outputs.stateTableName
    auditIndexTableName: storage.outputs.auditIndexTableName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    actionsQueueName: serviceBus.outputs.queueName
    actionsMaxDeliveries: serviceBus.outputs.maxDeliveryCount
    webhookSecretUri: keyVault.outputs.webhookSecretUri
    graphBaseUrl: graphBaseUrl
    alertPollSchedule: alertPollSchedule
    alertPollLookbackMinutes: alertPollLookbackMinutes
    dryRun: dryRun
    protectedIdentities: protectedIdentities
    maxBodyBytes: maxBodyBytes
    ipAllowlist: ipAllowlist
    breakglassAccounts: breakglassAccounts
    breakglassRestingState: breakglassRestingState
    exchangeTenant: tenant().tenantId
    exchangeRuleMode: exchangeRuleMode
    ipBlockSweepSchedule: ipBlockSweepSchedule
    authTenantId: tenant().tenantId
    authAudience: authAudience
    notificationsQueueName: serviceBus.outputs.notificationsQueueName
    subscriptionRenewSchedule: subscriptionRenewSchedule
    notificationUrl: notificationUrl
    lifecycleNotificationUrl: lifecycleNotificationUrl
    watchedGroups: watchedGroups
    watchAllUsers: watchAllUsers
    eventHubFullyQualifiedNamespace: eventHub.outputs.fullyQualifiedNamespace
    defenderEventHubName: eventHub.outputs.hubName
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output SERVICE_BUS_NAMESPACE string = serviceBus.outputs.name
output SERVICE_BUS_FULLY_QUALIFIED_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output EVENT_HUB_NAMESPACE string = eventHub.outputs.name
output DEFENDER_EVENT_HUB string = eventHub.outputs.hubName
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName

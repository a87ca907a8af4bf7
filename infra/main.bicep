// M365 Responder: one resource group holding the function app and everything it talks to, and
// the API's app registration in Microsoft Entra ID. Deployed by `azd provision` (`azd up`); the
// preprovision hook generates the secrets, the postprovision hook grants the managed identity its
// Graph and Exchange application permissions (infra/grant-graph-permissions.sh). docs/deploy.md
// walks through it.
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

@description('Object id of the deploying user or principal: given the data roles the command line needs (audit, approvals) and made owner of the API registration. Empty: nobody.')
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

@description('Create the API\'s app registration (app roles Responder.Act, Responder.Approve, Audit.Read; v2.0 tokens; Azure CLI pre-authorized). Needs a deployer allowed to create applications (Application Developer or Cloud Application Administrator).')
param createApiRegistration bool = true

@description('Client id of an existing API registration, used only when createApiRegistration is false; empty leaves the HTTP API closed.')
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

@secure()
@description('URL of the Teams Workflows flow "Post to a channel when a webhook request is received" (https, on *.logic.azure.com or *.environment.api.powerplatform.com); empty: no Teams notices.')
param noticeTeamsWebhookUrl string = ''

@description('Event classes posted to Teams, comma-separated: executed, held, refused, failed, breakglass, block_expired, readiness.')
param noticeTeamsEvents string = 'executed,held,refused,failed,breakglass,block_expired,readiness'

@description('Mailbox (UPN or object id) notices are e-mailed from; restrict Mail.Send to it (docs/notices.md). Empty: no e-mail.')
param noticeMailSender string = ''

@description('E-mail recipients per event class: held,failed=oncall@contoso.com;*=soc@contoso.com. Empty: no e-mail.')
param noticeMailRoutes string = ''

@description('Comment on the originating Graph alerts_v2 alert (grant SecurityAlert.ReadWrite.All with --with-alert-comments).')
param noticeAlertComments bool = false

@description('ARM id of the Microsoft Sentinel workspace whose incidents get comments; the identity is given Microsoft Sentinel Responder on it. Empty: no incident comments.')
param sentinelWorkspaceId string = ''

@description('URL of the audit page (https://<app>/api/audit/ui) that notices link to; empty: no links.')
param noticePageUrl string = ''

@description('NCRONTAB schedule of the timer that creates and renews the change notification subscriptions, in UTC.')
param subscriptionRenewSchedule string = '0 */30 * * * *'

@secure()
@minLength(32)
@description('Shared secret the alert webhook expects in X-Responder-Key; stored in Key Vault only. The preprovision hook generates it into the azd environment when absent.')
param webhookSecret string

@maxLength(8)
@description('Appended to the Key Vault name. The preprovision hook generates it and the postdown hook replaces it, so `azd up` after `azd down` never meets the soft-deleted vault of the last deployment (purge protection keeps that name for 90 days).')
param vaultSuffix string = ''

@minValue(1)
@maxValue(2000)
@description('Deliveries of one action before Service Bus dead-letters it; the app audits the last one as failed.')
param actionsMaxDeliveries int = 10

@minLength(3)
@description('Longest an action may wait in the queue (ISO 8601 duration); it must outlast the longest scheduled revert.')
param actionsMessageTimeToLive string = 'P14D'

@description('NCRONTAB schedule of the alerts_v2 poller, in UTC (Flex Consumption has no WEBSITE_TIME_ZONE).')
param alertPollSchedule string = '0 */1 * * * *'

@minValue(1)
@maxValue(10080)
param alertPollLookbackMinutes int = 60

@minValue(1024)
@maxValue(33554432)
@description('Largest accepted webhook body.')
param maxBodyBytes int = 1048576

@allowed([
  'https://graph.microsoft.com/v1.0'
  'https://graph.microsoft.us/v1.0'
  'https://dod-graph.microsoft.us/v1.0'
  'https://microsoftgraph.chinacloudapi.cn/v1.0'
])
@description('Microsoft Graph of the customer\'s cloud.')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

// Scale-out only helps until Graph and Exchange throttle. Graph limits requests per app and
// tenant, Exchange's admin endpoint far more tightly, and every instance runs up to 16 actions at
// once (host.json maxConcurrentCalls): 40 instances already make 640 concurrent callers into one
// tenant. More instances would turn a storm into 429s and Retry-After waits, not into faster
// containment; IP blocks are batched into one pass per storm anyway.
@minValue(40)
@maxValue(100)
@description('Upper bound of instances, bounded by Graph and Exchange throttling (see main.bicep).')
param maximumInstanceCount int = 40

// Flex Consumption sizes: CPU and network are allocated in proportion to memory. The app peaks at
// about 124 MiB (bench/storm.py, 10,104 alerts through one worker), but its cold start is CPU-bound
// (msgraph-sdk loads about a thousand modules, about 1 s on two cores), so the 2,048 MB size's
// share of CPU is the one worth paying for; 4,096 MB buys CPU the app cannot use between storms.
@allowed([
  2048
  4096
])
@description('Memory of each instance in MB; CPU is allocated in proportion.')
param instanceMemoryMB int = 2048

// HTTP invocations one instance takes at once, declared rather than left to the platform's
// default. The alert webhook and the API are async functions: one instance's event loop runs
// its invocations side by side, and a storm's batch spends most of its time waiting on storage.
// bench/storm.py, one process on two cores, over one afternoon: 1 POST in flight 410-693 alerts/s,
// 4 in flight 736-1,094, 16 in flight 804-854 with the last address blocked later, as the intake
// starves the executor sharing its process (docs/performance.md). Past 4, another instance helps.
@minValue(1)
@maxValue(16)
@description('Concurrent HTTP invocations per instance (webhook, API); more scale out.')
param httpPerInstanceConcurrency int = 4

@minValue(0)
@maxValue(10)
@description('Always-ready instances for the HTTP functions (alert webhook, API) and each Service Bus triggered function (execute_action, process_notification): containment never waits for a cold start. 0 turns them off (cheaper, seconds slower after idle).')
param alwaysReadyInstances int = 1

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
    // Unique per deployment: the token (subscription, environment, region) and the suffix the
    // hooks renew after `azd down`, since a purge-protected vault keeps its name while deleted.
    name: '${abbrs.keyVaultVaults}${resourceToken}${toLower(vaultSuffix)}'
    webhookSecret: webhookSecret
  }
}

// The API's app registration: engineers and automation call the HTTP API with tokens for it.
module apiRegistration 'app/apiregistration.bicep' = if (createApiRegistration) {
  name: 'apiregistration'
  scope: rg
  params: {
    uniqueName: 'm365-responder-${resourceToken}'
    displayName: 'M365 Responder API (${environmentName})'
    ownerId: principalId
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
    auditAnchorContainerName: storage.outputs.auditAnchorContainerName
    serviceBusNamespaceName: serviceBus.outputs.name
    actionsQueueName: serviceBus.outputs.queueName
    notificationsQueueName: serviceBus.outputs.notificationsQueueName
    noticesQueueName: serviceBus.outputs.noticesQueueName
    eventHubNamespaceName: eventHub.outputs.name
    eventHubName: eventHub.outputs.hubName
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

// Comments on Sentinel incidents: the Responder role on the workspace, wherever it lives
// (its ARM id names the subscription and resource group).
module sentinelRbac 'app/sentinel-rbac.bicep' = if (!empty(sentinelWorkspaceId)) {
  name: 'sentinel-rbac'
  scope: resourceGroup(split(sentinelWorkspaceId, '/')[2], split(sentinelWorkspaceId, '/')[4])
  params: {
    managedIdentityPrincipalId: identity.outputs.principalId
    workspaceName: last(split(sentinelWorkspaceId, '/'))
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
    instanceMemoryMB: instanceMemoryMB
    alwaysReadyInstances: alwaysReadyInstances
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: storage.outputs.deploymentContainerName
    auditTableName: storage.outputs.auditTableName
    stateTableName: storage.outputs.stateTableName
    auditIndexTableName: storage.outputs.auditIndexTableName
    auditAnchorContainerName: storage.outputs.auditAnchorContainerName
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
    authAudience: createApiRegistration ? apiRegistration!.outputs.appId : authAudience
    notificationsQueueName: serviceBus.outputs.notificationsQueueName
    noticesQueueName: serviceBus.outputs.noticesQueueName
    noticeTeamsWebhookUrl: noticeTeamsWebhookUrl
    noticeTeamsEvents: noticeTeamsEvents
    noticeMailSender: noticeMailSender
    noticeMailRoutes: noticeMailRoutes
    noticeAlertComments: noticeAlertComments
    sentinelWorkspaceId: sentinelWorkspaceId
    noticePageUrl: noticePageUrl
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
output AUTH_AUDIENCE string = createApiRegistration ? apiRegistration!.outputs.appId : authAudience
output API_IDENTIFIER_URI string = createApiRegistration ? apiRegistration!.outputs.identifierUri : ''

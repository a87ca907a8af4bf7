// The function app on a Flex Consumption plan, and every app setting the responder reads in Azure.
param location string = resourceGroup().location
param tags object = {}
param name string
param planName string
param identityName string
param storageAccountName string
param deploymentStorageContainerName string
param auditTableName string
param stateTableName string
// The name storage.bicep gives the audit index table.
param auditIndexTableName string
param auditAnchorContainerName string
param applicationInsightsName string
param serviceBusFullyQualifiedNamespace string
param actionsQueueName string
param actionsMaxDeliveries int
param webhookSecretUri string
param graphBaseUrl string
param alertPollSchedule string
param alertPollLookbackMinutes int
param dryRun bool
param protectedIdentities string
param maxBodyBytes int
param ipAllowlist string
param breakglassAccounts string
param breakglassRestingState string
param exchangeTenant string
param exchangeRuleMode string
param ipBlockSweepSchedule string
param authTenantId string
param authAudience string
param notificationsQueueName string
param noticesQueueName string
@secure()
param noticeTeamsWebhookUrl string
param noticeTeamsEvents string
param noticeMailSender string
param noticeMailRoutes string
param noticeAlertComments bool
param sentinelWorkspaceId string
param noticePageUrl string
param subscriptionRenewSchedule string
@secure()
param notificationUrl string
@secure()
param lifecycleNotificationUrl string
param watchedGroups string
param watchAllUsers bool
param eventHubFullyQualifiedNamespace string
param defenderEventHubName string

// Sizes and bounds are chosen and explained in main.bicep.
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@minValue(40)
@maxValue(100)
param maximumInstanceCount int = 40

@minValue(0)
@maxValue(10)
param alwaysReadyInstances int = 1

@minValue(1)
@maxValue(16)
param httpPerInstanceConcurrency int = 4

// Flex Consumption scales HTTP functions as one group (`http`) and every other trigger per
// function (`function:<name>`): https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to#set-always-ready-instance-counts
// Kept warm: the alert webhook and the API (http), and the Service Bus triggers that execute
// containment, process change notifications and tell the people on call (a held action waits
// for someone to read its notice). Timers may start cold.
var alwaysReadyGroups = [
  'http'
  'function:execute_action'
  'function:process_notification'
  'function:send_notice'
]

// pyproject.toml pins the project to Python 3.11.
param pythonVersion string = '3.11'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Settings the code reads (shared/config.py) but that stay unset in Azure, so their defaults
// apply or they only make sense locally. A test reads these lines: setting one of them here,
// or adding a setting to the code without handling it in this file, fails the build.
//   local-only: RESPONDER_TABLES_CONNECTION  (Azurite connection string; Azure uses the endpoint and the identity)
//   local-only: SIMULATOR_TOKEN              (only for RESPONDER_CREDENTIAL=simulator)
//   local-only: GRAPH_MAX_RETRIES            (default 3)
//   local-only: GRAPH_RETRY_DELAY_SECONDS    (default 3)
//   local-only: GRAPH_TIMEOUT_SECONDS        (default 30)
//   local-only: RESPONDER_PLAYBOOK           (default: the playbook shipped with the app)
//   local-only: EXCHANGE_BASE_URL            (default https://outlook.office365.com)
//   local-only: IP_BLOCK_MIN_PREFIX_V4       (default 24)
//   local-only: IP_BLOCK_MIN_PREFIX_V6       (default 48)
//   local-only: IP_BLOCK_BATCH_SECONDS       (default 1)
//   local-only: AUTO_DISABLE_BUDGET          (default 10)
//   local-only: AUTO_DISABLE_WINDOW_MINUTES  (default 60)
//   local-only: APPROVAL_TTL_MINUTES         (default 240)
//   local-only: AUTH_ISSUER                  (default: the tenant's Entra v2.0 issuer)
//   local-only: ARM_BASE_URL                 (default https://management.azure.com)
//   local-only: NOTICE_MAX_PER_MINUTE        (default 20)
//   local-only: AUTH_JWKS_URL                (default: the tenant's Entra v2.0 signing keys)
//   local-only: PRIVILEGED_ROLE_IDS          (default: the built-in roles Microsoft marks privileged)
//   local-only: MIN_ENABLED_GLOBAL_ADMINS    (default 2)
//   local-only: BREAKGLASS_TTL_MINUTES       (default 240)
//   local-only: BREAKGLASS_APPROVAL          (default human)
// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are deprecated on Flex Consumption:
// functionAppConfig.runtime below replaces them.
var appSettings = {
  // Host storage, identity-based: the account has no keys to put in a connection string.
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'

  // Tables, reached with the managed identity.
  RESPONDER_TABLES_ENDPOINT: storage.properties.primaryEndpoints.table
  RESPONDER_AUDIT_TABLE: auditTableName
  RESPONDER_STATE_TABLE: stateTableName
  RESPONDER_AUDIT_INDEX_TABLE: auditIndexTableName
  // The audit checkpoints: a write-once container, and the timer writing them.
  RESPONDER_BLOB_ENDPOINT: storage.properties.primaryEndpoints.blob
  RESPONDER_AUDIT_ANCHOR_CONTAINER: auditAnchorContainerName
  AUDIT_CHECKPOINT_SCHEDULE: '0 */5 * * * *'

  // Graph, as the user-assigned identity (a function app may hold several identities).
  GRAPH_BASE_URL: graphBaseUrl
  RESPONDER_CREDENTIAL: 'managed_identity'
  AZURE_CLIENT_ID: identity.properties.clientId

  // The actions queue: the app's sender and the trigger's `ServiceBusConnection` prefix.
  RESPONDER_QUEUE: 'servicebus'
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identity.properties.clientId
  ACTIONS_QUEUE: actionsQueueName
  ACTIONS_MAX_DELIVERIES: string(actionsMaxDeliveries)
  // Retries after infrastructure errors, given up by elapsed time; the reconciler's timer.
  ACTIONS_GIVE_UP_MINUTES: '60'
  ACTIONS_RETRY_BASE_SECONDS: '5'
  ACTIONS_RETRY_MAX_SECONDS: '300'
  ACTIONS_WRITE_SETTLE_SECONDS: '120'
  ACTIONS_RESEND_AFTER_SECONDS: '120'
  ACTIONS_STUCK_MINUTES: '90'
  RECONCILE_SCHEDULE: '0 */1 * * * *'
  // Time to live of closed working-state rows (never the audit trail), and its daily timer.
  STATE_TTL_DAYS: '30'
  CLEANUP_SCHEDULE: '0 30 3 * * *'

  // Alert intake.
  ALERT_POLL_SCHEDULE: alertPollSchedule
  ALERT_POLL_LOOKBACK_MINUTES: string(alertPollLookbackMinutes)
  RESPONDER_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${webhookSecretUri})'
  RESPONDER_MAX_BODY_BYTES: string(maxBodyBytes)

  // Policy.
  RESPONDER_DRY_RUN: dryRun ? 'true' : 'false'
  RESPONDER_PROTECTED_IDENTITIES: protectedIdentities
  RESPONDER_IP_ALLOWLIST: ipAllowlist

  // Emergency access: the accounts, and the state they rest in between emergencies.
  BREAKGLASS_ACCOUNTS: breakglassAccounts
  BREAKGLASS_RESTING_STATE: breakglassRestingState
  // Timers of the guards (binding expressions need the setting even at its default).
  BREAKGLASS_HEALTH_SCHEDULE: '0 0 * * * *'
  APPROVAL_SWEEP_SCHEDULE: '0 */5 * * * *'
  READINESS_SCHEDULE: '0 0 6 * * *'

  // IP blocks: Exchange Online transport rules in this tenant, and their expiry sweep.
  EXCHANGE_TENANT: exchangeTenant
  EXCHANGE_RULE_MODE: exchangeRuleMode
  IP_BLOCK_SWEEP_SCHEDULE: ipBlockSweepSchedule

  // The HTTP API accepts Entra tokens of this tenant, issued for this audience.
  AUTH_TENANT_ID: authTenantId
  AUTH_AUDIENCE: authAudience

  // Graph change notifications: the webhook URLs carry the function key in `?code=`, since
  // Graph keeps the query string; the tenant every notification must name; what is watched.
  NOTIFICATION_URL: notificationUrl
  LIFECYCLE_NOTIFICATION_URL: lifecycleNotificationUrl
  NOTIFICATION_TENANT_ID: authTenantId
  WATCHED_GROUPS: watchedGroups
  WATCH_ALL_USERS: watchAllUsers ? 'true' : 'false'
  SUBSCRIPTION_RENEW_SCHEDULE: subscriptionRenewSchedule
  NOTIFICATIONS_QUEUE: notificationsQueueName

  // Notices to the people on call: Teams (a Workflows webhook URL), e-mail (Graph sendMail
  // from one mailbox, recipients per event class), comments on the originating alert and
  // Sentinel incident, links to the audit page; the dispatcher's timer and queue.
  NOTICES_QUEUE: noticesQueueName
  NOTICES_SCHEDULE: '0 */1 * * * *'
  NOTICE_TEAMS_WEBHOOK_URL: noticeTeamsWebhookUrl
  NOTICE_TEAMS_EVENTS: noticeTeamsEvents
  NOTICE_MAIL_SENDER: noticeMailSender
  NOTICE_MAIL_ROUTES: noticeMailRoutes
  NOTICE_ALERT_COMMENTS: noticeAlertComments ? 'true' : 'false'
  SENTINEL_WORKSPACE_ID: sentinelWorkspaceId
  NOTICE_PAGE_URL: noticePageUrl

  // The Defender XDR stream: the trigger's `DefenderEventHubConnection` prefix.
  DEFENDER_EVENTHUB: defenderEventHubName
  DefenderEventHubConnection__fullyQualifiedNamespace: eventHubFullyQualifiedNamespace
  DefenderEventHubConnection__credential: 'managedidentity'
  DefenderEventHubConnection__clientId: identity.properties.clientId
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references default to a system-assigned identity, which this app does not have.
    keyVaultReferenceIdentity: identity.id
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: [
          for group in (alwaysReadyInstances > 0 ? alwaysReadyGroups : []): {
            name: group
            instanceCount: alwaysReadyInstances
          }
        ]
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: appSettings
  }
}

output name string = functionApp.name
output uri string = 'https://${functionApp.properties.defaultHostName}'

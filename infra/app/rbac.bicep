// Least-privilege roles for the app's managed identity, each at the narrowest scope that works:
// single tables, the single queue, the single vault. Nothing here grants table access at the
// account level, since that would let the app rewrite its own audit trail.
param managedIdentityPrincipalId string

@description('The deploying principal: it gets exactly the data roles the command line\'s audit and approval commands need. Empty: no grant.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

param storageAccountName string
param auditTableName string
param stateTableName string
// The name storage.bicep gives the audit index table.
param auditIndexTableName string
// The write-once container of the audit checkpoints.
param auditAnchorContainerName string
param serviceBusNamespaceName string
param actionsQueueName string
param notificationsQueueName string
param noticesQueueName string
param eventHubNamespaceName string
param eventHubName string
param keyVaultName string
param applicationInsightsName string

// Built-in role ids: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
var serviceBusDataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender
var serviceBusDataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // Azure Service Bus Data Receiver
var eventHubsDataReceiverRoleId = 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde' // Azure Event Hubs Data Receiver
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource auditAnchorContainer 'containers' existing = {
      name: auditAnchorContainerName
    }
  }

  resource tableService 'tableServices' existing = {
    name: 'default'

    resource auditTable 'tables' existing = {
      name: auditTableName
    }

    resource stateTable 'tables' existing = {
      name: stateTableName
    }

    resource auditIndexTable 'tables' existing = {
      name: auditIndexTableName
    }
  }
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName

  resource actionsQueue 'queues' existing = {
    name: actionsQueueName
  }

  resource notificationsQueue 'queues' existing = {
    name: notificationsQueueName
  }

  resource noticesQueue 'queues' existing = {
    name: noticesQueueName
  }
}

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName

  resource defenderHub 'eventhubs' existing = {
    name: eventHubName
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Insert and read only: no built-in table role stops short of update and delete. With shared keys
// disabled, this makes the audit trail append-only for the app itself. Role names are unique per
// tenant, so the resource group name keeps environments apart.
resource auditAppenderRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'M365 Responder Audit Appender')
  properties: {
    roleName: 'M365 Responder Audit Appender (${resourceGroup().name})'
    description: 'Reads and inserts audit records; cannot change or remove them.'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.Storage/storageAccounts/tableServices/tables/entities/read'
          'Microsoft.Storage/storageAccounts/tableServices/tables/entities/add/action'
        ]
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

// Read and append only, for the audit checkpoints: no built-in blob role stops short of write and
// delete. `add/action` creates a blob and appends blocks (Put Blob for a new blob, Append Block);
// `read` lists and reads them. The container's time-based immutability policy keeps every
// checkpoint unchanged whatever role reaches it.
resource auditAnchorAppenderRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'M365 Responder Audit Anchor Appender')
  properties: {
    roleName: 'M365 Responder Audit Anchor Appender (${resourceGroup().name})'
    description: 'Reads and appends audit checkpoints; cannot change or remove them.'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action'
        ]
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource auditAnchorAppender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::blobService::auditAnchorContainer.id, managedIdentityPrincipalId, auditAnchorAppenderRole.name)
  scope: storage::blobService::auditAnchorContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', auditAnchorAppenderRole.name)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Host storage: function keys, timer locks and the deployment package are blobs. Queue and table
// roles are left out on purpose: no blob trigger or Durable Functions here, and account-wide
// table access would reach the audit table (the host's diagnostic events are not persisted).
resource hostStorageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, managedIdentityPrincipalId, storageBlobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource auditTableAppender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::tableService::auditTable.id, managedIdentityPrincipalId, auditAppenderRole.name)
  scope: storage::tableService::auditTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', auditAppenderRole.name)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Watermark, handled alerts and the action ledger are updated and deleted in place.
resource stateTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::tableService::stateTable.id, managedIdentityPrincipalId, storageTableDataContributorRoleId)
  scope: storage::tableService::stateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The audit index is derived data: written after each append, rebuilt by `responder audit reindex`.
// Contributor on this table only; it grants nothing on the audit trail itself.
resource auditIndexTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::tableService::auditIndexTable.id, managedIdentityPrincipalId, storageTableDataContributorRoleId)
  scope: storage::tableService::auditIndexTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The alert triggers enqueue actions; the executor's trigger receives them. Both on the one queue.
resource actionsQueueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus::actionsQueue.id, managedIdentityPrincipalId, serviceBusDataSenderRoleId)
  scope: serviceBus::actionsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource actionsQueueReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus::actionsQueue.id, managedIdentityPrincipalId, serviceBusDataReceiverRoleId)
  scope: serviceBus::actionsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiverRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The notification webhook enqueues what it accepted; process_notification receives it.
resource notificationsQueueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus::notificationsQueue.id, managedIdentityPrincipalId, serviceBusDataSenderRoleId)
  scope: serviceBus::notificationsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource notificationsQueueReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus::notificationsQueue.id, managedIdentityPrincipalId, serviceBusDataReceiverRoleId)
  scope: serviceBus::notificationsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiverRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The notice dispatcher enqueues notices; send_notice receives them (and reschedules a retry).
resource noticesQueueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus::noticesQueue.id, managedIdentityPrincipalId, serviceBusDataSenderRoleId)
  scope: serviceBus::noticesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource noticesQueueReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus::noticesQueue.id, managedIdentityPrincipalId, serviceBusDataReceiverRoleId)
  scope: serviceBus::noticesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiverRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// ingest_defender_stream reads the Defender stream; it never sends to the hub.
resource defenderHubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventHubNamespace::defenderHub.id, managedIdentityPrincipalId, eventHubsDataReceiverRoleId)
  scope: eventHubNamespace::defenderHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiverRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Resolves the RESPONDER_WEBHOOK_SECRET Key Vault reference.
resource vaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, managedIdentityPrincipalId, keyVaultSecretsUserRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights has local auth disabled, so telemetry is sent with the identity.
resource telemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, managedIdentityPrincipalId, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The deployer's data roles: what `responder audit verify|query|export|reindex` and
// `responder approvals list|approve|reject` need from a laptop (--credential azure_cli), nothing
// more. Like the app, the deployer can append to the audit trail (an approval is audited) but
// never change or delete a record; the index is derived data (reindex rewrites it); approvals,
// the ledger and the block registry live in the state table; an approval queues its action.
// Breakglass checks and `plan --tenant` read Graph with the engineer's own directory rights.
resource deployerAuditAppender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(storage::tableService::auditTable.id, principalId, auditAppenderRole.name)
  scope: storage::tableService::auditTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', auditAppenderRole.name)
    principalId: principalId
    principalType: principalType
  }
}

resource deployerAuditIndexContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(storage::tableService::auditIndexTable.id, principalId, storageTableDataContributorRoleId)
  scope: storage::tableService::auditIndexTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: principalId
    principalType: principalType
  }
}

resource deployerStateContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(storage::tableService::stateTable.id, principalId, storageTableDataContributorRoleId)
  scope: storage::tableService::stateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: principalId
    principalType: principalType
  }
}

resource deployerActionsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(serviceBus::actionsQueue.id, principalId, serviceBusDataSenderRoleId)
  scope: serviceBus::actionsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: principalId
    principalType: principalType
  }
}

output auditAppenderRoleId string = auditAppenderRole.name

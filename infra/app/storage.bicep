// One storage account: the Functions host's storage, the deployment package container, and the
// responder's tables (the hash-chained audit trail, its derived index, the mutable working state).
param location string = resourceGroup().location
param tags object = {}
param name string
param skuName string = 'Standard_LRS'
param deploymentStorageContainerName string

// The app's Settings default to these names; a test keeps them equal.
var auditTableName = 'AuditTrail'
var stateTableName = 'ResponderState'
var auditIndexTableName = 'AuditIndex'
var auditAnchorContainerName = 'audit-anchors'

@description('Days each audit checkpoint stays write-once (time-based immutability) after it is written.')
@minValue(1)
@maxValue(146000)
param auditAnchorRetentionDays int = 3650

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    // Shared keys would bypass RBAC, and with it the insert-only audit role.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }

  resource blobService 'blobServices' = {
    name: 'default'

    resource deploymentContainer 'containers' = {
      name: deploymentStorageContainerName
      properties: {
        publicAccess: 'None'
      }
    }

    // The audit checkpoints (append blobs): write-once for the retention period, appends
    // allowed. Lock the policy after the first deployment (docs/audit.md): a locked policy can
    // only be lengthened, and nobody, the account's owners included, can change or delete a
    // checkpoint before it expires.
    resource auditAnchorContainer 'containers' = {
      name: auditAnchorContainerName
      properties: {
        publicAccess: 'None'
      }

      resource auditAnchorPolicy 'immutabilityPolicies' = {
        name: 'default'
        properties: {
          immutabilityPeriodSinceCreationInDays: auditAnchorRetentionDays
          allowProtectedAppendWrites: true
        }
      }
    }
  }

  // The deployment creates the tables: the app's roles cannot create tables.
  resource tableService 'tableServices' = {
    name: 'default'

    resource auditTable 'tables' = {
      name: auditTableName
    }

    resource stateTable 'tables' = {
      name: stateTableName
    }

    // Derived from the audit trail and rebuildable from it (`responder audit reindex`).
    resource auditIndexTable 'tables' = {
      name: auditIndexTableName
    }
  }
}

output name string = storage.name
output deploymentContainerName string = storage::blobService::deploymentContainer.name
output auditTableName string = storage::tableService::auditTable.name
output stateTableName string = storage::tableService::stateTable.name
output auditIndexTableName string = storage::tableService::auditIndexTable.name
output auditAnchorContainerName string = storage::blobService::auditAnchorContainer.name

// The Service Bus queue that carries action requests from the alert triggers to the executor.
param location string = resourceGroup().location
param tags object = {}
param name string
param queueName string = 'actions'

@minValue(1)
@maxValue(2000)
param maxDeliveryCount int

param messageTimeToLive string = 'P14D'

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  // Standard is the lowest tier with duplicate detection and scheduled messages.
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    // Entra only: no SAS keys that would sidestep the queue-scoped roles.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: queueName
  properties: {
    // The message id is the deterministic action id: a repeated request inside the window is dropped.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT1M'
    defaultMessageTimeToLive: messageTimeToLive
    deadLetteringOnMessageExpiration: true
    requiresSession: false
    enablePartitioning: false
  }
}

output name string = namespace.name
// Host name only, as the Functions trigger and azure-servicebus expect it.
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '/')[2], ':')[0]
output queueName string = queue.name
// The app's ACTIONS_MAX_DELIVERIES is taken from here, so the two cannot drift.
output maxDeliveryCount int = queue.properties.maxDeliveryCount

// The Service Bus queues: action requests from the alert triggers to the executor, and accepted
// Graph change notifications from the webhook to their processor, and notices from their
// dispatcher to their sender.
param location string = resourceGroup().location
param tags object = {}
param name string
param queueName string = 'actions'
param notificationsQueueName string = 'notifications'
param noticesQueueName string = 'notices'

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

// The message id is the notification's key: a notification Graph delivers twice is dropped.
resource notificationsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: notificationsQueueName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT1M'
    defaultMessageTimeToLive: 'P1D'
    deadLetteringOnMessageExpiration: true
    requiresSession: false
    enablePartitioning: false
  }
}

// Notices to the people on call (Teams, e-mail, alert comments). The message id is the
// deterministic task id: a dispatch pass repeated after a crash sends no duplicate.
resource noticesQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: noticesQueueName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT1M'
    defaultMessageTimeToLive: 'P1D'
    deadLetteringOnMessageExpiration: true
    requiresSession: false
    enablePartitioning: false
  }
}

output name string = namespace.name
// Host name only, as the Functions trigger and azure-servicebus expect it.
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '/')[2], ':')[0]
output queueName string = queue.name
output notificationsQueueName string = notificationsQueue.name
output noticesQueueName string = noticesQueue.name
// The app's ACTIONS_MAX_DELIVERIES is taken from here, so the two cannot drift.
output maxDeliveryCount int = queue.properties.maxDeliveryCount

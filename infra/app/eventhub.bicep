// The Event Hub the Defender XDR streaming API writes AlertInfo and AlertEvidence records to.
param location string = resourceGroup().location
param tags object = {}
param name string
param hubName string = 'defender-alerts'

@minValue(1)
@maxValue(7)
param retentionDays int = 1

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  properties: {
    // Entra only: the app reads with its identity, no SAS keys to leak.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: hubName
  properties: {
    partitionCount: 2
    messageRetentionInDays: retentionDays
  }
}

output name string = namespace.name
output hubName string = hub.name
// Host name only, as the Functions trigger expects it.
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '/')[2], ':')[0]

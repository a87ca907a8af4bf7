// The app's user-assigned identity. It lives in its own module so its roles can be granted
// before the function app first starts (see the api module's dependsOn in main.bicep).
param location string = resourceGroup().location
param tags object = {}
param name string

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output name string = identity.name
output id string = identity.id
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId

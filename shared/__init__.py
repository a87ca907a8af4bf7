"""M365 Responder's core library: models, policy, services, adapters. Never imports
azure.functions, so it runs and tests without the Functions host."""

"""Azure Functions triggers: thin translations between the host's objects and shared/ services."""

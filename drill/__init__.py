"""Drills: containment scenarios run end to end through the real function handlers, against the
simulated tenant and Azurite. This package plays the Functions host, so it lives outside
shared/, which never imports azure.functions."""

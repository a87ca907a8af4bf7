"""Watching the directory through Graph change notifications: the subscriptions the
configuration asks for, the webhook's checks, and what a change means."""

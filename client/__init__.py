"""droptune's Python client and CLI."""

from droptune.client.api import Client, ClientError, WaitTimedOut

__all__ = ["Client", "ClientError", "WaitTimedOut"]

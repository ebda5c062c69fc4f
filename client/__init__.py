"""droptune's Python client and CLI."""

from droptune.client.api import Client, ClientError

__all__ = ["Client", "ClientError"]

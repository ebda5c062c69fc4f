"""droptune's Python client and CLI."""

from client.api import Client, ClientError

__all__ = ["Client", "ClientError"]

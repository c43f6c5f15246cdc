"""Client side: head and tail runtime."""

from splitfed.client.split_client import SplitClient

__all__ = ["SplitClient"]

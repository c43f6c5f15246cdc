"""Client side: the head and tail runtime (``SplitClient``; ``TwoPartClient`` keeps only the head)."""

from splitfed.client.split_client import SplitClient
from splitfed.client.two_part_client import TwoPartClient, client_class

__all__ = ["SplitClient", "TwoPartClient", "client_class"]

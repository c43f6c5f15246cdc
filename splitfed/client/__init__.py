"""Client side: the head and tail runtime (``SplitClient``; ``TwoPartClient`` keeps only the head)."""

from splitfed.client.split_client import SplitClient, client_class
from splitfed.client.two_part_client import TwoPartClient

__all__ = ["SplitClient", "TwoPartClient", "client_class"]

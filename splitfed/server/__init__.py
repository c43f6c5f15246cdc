"""Server side: the trunk service."""

from splitfed.server.local_trunk import LocalTrunk, TrunkProtocolError

__all__ = ["LocalTrunk", "TrunkProtocolError"]

"""Federated split fine-tuning in one process, and its centralized baseline."""

from splitfed.federation.centralized import CentralizedTrainer
from splitfed.federation.config import FederationSettings, PartitionSettings
from splitfed.federation.inprocess import InProcessFederation

__all__ = ["CentralizedTrainer", "FederationSettings", "InProcessFederation", "PartitionSettings"]

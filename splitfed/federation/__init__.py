"""Federated split fine-tuning in one process, and its centralized baseline."""

from splitfed.federation.centralized import CentralizedTrainer
from splitfed.federation.config import FederationSettings
from splitfed.federation.inprocess import InProcessFederation, seeded_initial_states
from splitfed.training.split_settings import PartitionSettings

__all__ = [
    "CentralizedTrainer",
    "FederationSettings",
    "InProcessFederation",
    "PartitionSettings",
    "seeded_initial_states",
]

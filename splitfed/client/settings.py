"""Settings of one client process (``splitfed train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from splitfed.privacy import PrivacySettings
from splitfed.training.split_settings import SplitTrainingSettings
from splitfed.training.task_data import DataSettings


class ClientSettings(SplitTrainingSettings):
    """A client: its identity, the server it trusts, its model parts and its private data."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="client name, as enrolled in the server's allow-list")
    identity: Path = Field(description="the client's private key file (from `splitfed keygen`)")
    server: str = Field("127.0.0.1:50051", description="host:port of the trunk server")
    server_key: Path = Field(description="the server's public identity file (.pub), pinned")
    server_cert: Path | None = Field(None, description="the server's TLS certificate, pinned")
    tls_cert: Path | None = Field(None, description="mutual TLS: this client's certificate")
    tls_key: Path | None = Field(None, description="mutual TLS: this client's TLS private key")
    insecure_loopback: bool = Field(False, description="allow plaintext transport to a loopback address")
    data: DataSettings = DataSettings()
    privacy: PrivacySettings = Field(PrivacySettings(), description="clipping, noise and accounting of what "
                                                                    "the client sends (off by default)")
    steps: int = Field(20, ge=1, description="training steps in all")
    rounds: int = Field(1, ge=1, description="FedAvg rounds the steps are split into")
    fedavg: bool = Field(True, description="average head/tail adapters with the other clients every round")
    batch_size: int = Field(4, ge=1)
    wire_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    timeout_s: float = Field(300.0, gt=0, description="deadline of every request to the server")
    output: Path = Field(Path("runs/client"), description="where the head and tail adapters are saved")

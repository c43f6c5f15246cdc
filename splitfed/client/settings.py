"""Settings of one client process (``splitfed train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from splitfed.inference.sampling import SamplingSettings
from splitfed.layout import Layout
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
    data: DataSettings = Field(DataSettings(), description="this client's private training examples")
    privacy: PrivacySettings = Field(PrivacySettings(), description="clipping, noise and accounting of what "
                                                                    "the client sends (off by default)")
    steps: int = Field(20, ge=1, description="training steps in all")
    rounds: int = Field(1, ge=1, description="FedAvg rounds the steps are split into")
    fedavg: bool = Field(True, description="average head/tail adapters with the other clients every round")
    require_secure_aggregation: bool = Field(
        True, description="refuse to send adapters to a server that aggregates them in plain (FedAvg "
                          "rounds then need `aggregation: secure` on the server)")
    batch_size: int = Field(4, ge=1, description="examples per training step")
    wire_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the hidden states and gradients on the wire (half: half the bytes)")
    timeout_s: float = Field(300.0, gt=0, description="deadline of every request to the server")
    reconnect_timeout_s: float = Field(300.0, ge=0, description="keep retrying (with backoff) this long "
                                                                "while the server is unavailable")
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps (always: at the end "
                                                       "of each round and on SIGTERM/SIGINT)")
    checkpoint_dir: Path | None = Field(None, description="where checkpoints go (default: "
                                                           "output/checkpoints)")
    resume: bool = Field(False, description="continue from the newest intact checkpoint, if there is one")
    output: Path = Field(Path("runs/client"), description="where the head and tail adapters are saved "
                                                         "(and where `splitfed generate` loads them from)")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings,
                                       description="`splitfed generate`: how tokens are chosen")
    chat_template: bool = Field(True, description="`splitfed generate`: wrap prompts in the model's chat "
                                                  "template when it has one")

    @model_validator(mode="after")
    def _defense_fits_the_layout(self) -> ClientSettings:
        learned = self.privacy.learned
        if learned is not None and learned.bypass and self.partition.layout == Layout.TWO_PART:
            raise ValueError("privacy.learned.bypass feeds the client's tail, and partition.layout "
                             "two-part has none: set bypass: false or use the three-part layout")
        return self

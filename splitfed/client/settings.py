"""Settings of one client process (``splitfed train``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitfed.endpoints import MICRO_BATCHES_MAX
from splitfed.inference.sampling import SamplingSettings
from splitfed.layout import Layout
from splitfed.privacy import PrivacySettings
from splitfed.training.split_settings import SplitTrainingSettings
from splitfed.training.task_data import DataSettings
from splitfed.transport.codec import CodecName


class WireSettings(BaseModel):
    """How hidden states and gradients travel, each direction in its own codec (the server must accept
    both: it announces its codecs at the handshake and the client refuses to start otherwise)."""

    model_config = ConfigDict(extra="forbid")
    forward: CodecName = Field("float32", description="codec of the head's hidden states going up and of "
                                                      "the trunk's output coming down")
    backward: CodecName = Field("float32", description="codec of the tail's gradient going up and of the "
                                                       "gradient for the head coming down")
    block_size: int = Field(64, ge=8, le=65536, description="int8-blockwise: elements per block, each with "
                                                            "its own float32 scale (1 + 4 / block_size "
                                                            "bytes per element)")
    error_feedback: bool = Field(False, description="lossy backward codec: add each training example's "
                                                    "last quantization error of the gradient this client "
                                                    "sends to that example's next gradient (three-part "
                                                    "layout; no effect with float32)")
    error_feedback_mb: float = Field(256.0, gt=0, description="error feedback: memory for the examples' "
                                                              "residuals; the least recently seen are "
                                                              "dropped first")


class SelfCheckSettings(BaseModel):
    """Before adopting a FedAvg round's average, the client compares its loss on a few held-out rows of
    its own data (never trained on) with its own adapters and with the average, and keeps its own when
    the average is worse by more than the tolerance (``splitfed.client.self_check``)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="check every round's average on held-out rows before adopting "
                                            "it (FedAvg on; plain and secure rounds)")
    rows: int = Field(4, ge=1, le=64, description="rows of this client's data held out of training for the "
                                                  "check (at most a quarter of them; seeded by seed and "
                                                  "data.shard); each round costs two eval forwards of "
                                                  "these rows through the trunk")
    tolerance: float = Field(0.04, ge=0, description="keep this client's adapters when the held-out loss "
                                                    "with the average exceeds the loss with its own by more "
                                                    "than this fraction of it (or min_tolerance, whichever "
                                                    "is larger); honest non-IID averages measured up to 2%")
    min_tolerance: float = Field(0.02, ge=0, description="the least loss increase (nats) tolerated, for "
                                                         "losses near zero")


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
    self_check: SelfCheckSettings = Field(SelfCheckSettings(),
                                          description="check each round's average on held-out rows before "
                                                      "adopting it; keep this client's adapters when it is "
                                                      "worse")
    batch_size: int = Field(4, ge=1, description="examples per training step")
    micro_batches: int = Field(
        1, ge=1, le=MICRO_BATCHES_MAX,
        description="send each step's rows in this many micro-batches, pipelined so that the head and tail "
                    "compute while others travel and the server computes (the step equals the whole-batch "
                    "step); 1: one forward per step. For slow links; needs a sequential or hierarchical "
                    "server")
    wire_dtype: CodecName = Field(
        "float32", description="codec of the hidden states and gradients on the wire, both directions "
                               "(half: half the bytes; int8-blockwise: about a quarter); `wire` sets each "
                               "direction instead")
    wire: WireSettings | None = Field(None, description="per-direction codecs, block size and error "
                                                        "feedback; unset: wire_dtype both ways")
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

    def wire_settings(self) -> WireSettings:
        """The codecs in force: ``wire``, or ``wire_dtype`` in both directions."""
        return self.wire or WireSettings(forward=self.wire_dtype, backward=self.wire_dtype)

    @model_validator(mode="after")
    def _one_partition(self) -> ClientSettings:
        if self.partition.ranged:
            raise ValueError("partition.head_max/tail_max (or a [smallest, largest] range) are server "
                             "settings: "
                             "a client keeps one head and one tail, within the server's range")
        return self

    @model_validator(mode="after")
    def _defense_fits_the_layout(self) -> ClientSettings:
        learned = self.privacy.learned
        if learned is not None and learned.bypass and self.partition.layout == Layout.TWO_PART:
            raise ValueError("privacy.learned.bypass feeds the client's tail, and partition.layout "
                             "two-part has none: set bypass: false or use the three-part layout")
        return self

    @model_validator(mode="after")
    def _micro_batches_fit(self) -> ClientSettings:
        if self.micro_batches == 1:
            return self
        if self.micro_batches > self.batch_size:
            raise ValueError(f"micro_batches ({self.micro_batches}) cannot exceed batch_size "
                             f"({self.batch_size}): each micro-batch holds at least one row")
        if self.partition.layout == Layout.TWO_PART:
            raise ValueError("micro_batches > 1 needs the three-part layout (the two-part server computes "
                             "the loss in one message): set micro_batches: 1")
        if self.privacy.enabled:
            raise ValueError("micro_batches > 1 cannot be combined with privacy (its clipping, noise and "
                             "accounting are per step): set micro_batches: 1")
        return self

    @model_validator(mode="after")
    def _wire_is_set_once_and_fits_the_layout(self) -> ClientSettings:
        if self.wire is not None and "wire_dtype" in self.model_fields_set:
            raise ValueError("set wire_dtype (both directions) or wire (each direction), not both")
        wire = self.wire_settings()
        mixed = wire.forward != wire.backward or wire.error_feedback
        if self.partition.layout == Layout.TWO_PART and mixed:
            raise ValueError("partition.layout two-part: the server sends the head's gradient in the codec "
                             "of the hidden states it got, and the client sends no gradient; set "
                             "wire.backward equal to wire.forward and error_feedback false")
        return self

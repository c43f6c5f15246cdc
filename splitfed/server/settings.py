"""Settings of the trunk server process (``splitfed serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitfed.aggregation.robust import RobustAggregationSettings
from splitfed.models import SparseSpec
from splitfed.security.key_providers import SealingSettings
from splitfed.server.gradient_guard import GradientGuardSettings
from splitfed.training.split_settings import SplitTrainingSettings
from splitfed.transport.codec import WIRE_CODECS, CodecName

# The names a config may give. The registries (``server.modes.MODES``, ``server.backends``) import
# these settings and check at import that they implement exactly these names: settings stay below
# the code that runs them. (The two-part mode follows from partition.layout.)
THREE_PART_MODES = ("sequential", "client-batch", "hierarchical")
SUB_SERVER_BACKEND_NAMES = ("threads", "ray")
ModeName = Literal["sequential", "client-batch", "hierarchical", "auto"]
BackendName = Literal["threads", "ray"]


class FrontDoorSettings(BaseModel):
    """What a peer may hold before and after it authenticates (see ``splitfed.transport.admission``)."""

    model_config = ConfigDict(extra="forbid")
    first_message_timeout_s: float = Field(5.0, gt=0, description="a stream's first chunk must arrive "
                                                                  "within this, or it is cancelled")
    stream_idle_timeout_s: float = Field(15.0, gt=0, description="the longest gap between two chunks")
    unauthenticated_streams: int = Field(8, ge=1, description="streams waiting for their first chunk "
                                                              "at once; beyond, the oldest is cancelled")
    unauthenticated_per_peer: int = Field(4, ge=1, description="the same, per peer address")
    handshakes_per_s: float = Field(20.0, gt=0, description="handshakes a second per peer address "
                                                            "(burst: handshake_burst); more are refused")
    handshake_burst: int = Field(40, ge=1, description="handshakes a peer may send at once before the "
                                                       "rate applies")
    requests_in_flight: int = Field(4, ge=1, description="requests of one client served at once")
    requests_per_s: float = Field(200.0, gt=0, description="requests a second per client (burst: "
                                                           "request_burst); more are refused as busy")
    request_burst: int = Field(400, ge=1, description="requests a client may send at once before the "
                                                     "rate applies")


class FairUseSettings(BaseModel):
    """How long a training step may hold the trunk without its backward, and what befalls a client that
    keeps leaving steps open (see ``splitfed.server.fair_use``)."""

    model_config = ConfigDict(extra="forbid")
    step_deadline_floor_s: float = Field(5.0, gt=0, description="a training step's backward is awaited at "
                                         "least this long (step_timeout_s: at most)")
    step_deadline_factor: float = Field(10.0, gt=1, description="... and otherwise this times the measured "
                                        "forward->backward time of completed steps (the median over clients "
                                        "of each one's median); past it the step is dropped, its turn freed")
    held_steps_suspend: int = Field(4, ge=1, description="a client whose steps were dropped this often "
                                    "within held_steps_window_s is suspended (PERMISSION_DENIED "
                                    "suspended); before, each drop makes its next training step wait 4^n "
                                    "deadlines")
    held_steps_window_s: float = Field(600.0, gt=0, description="how long a dropped step counts against its "
                                       "client")
    suspension_s: float = Field(900.0, gt=0, description="how long a suspended client's training steps are "
                                "refused")


class RaySettings(BaseModel):
    """Where the Ray backend runs its actor sub-servers (``backend: ray``)."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="the Ray cluster to join (`auto`: the one running on "
                                "this machine; an address `host:port`); unset: start a local Ray instance")
    local_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (unset: all)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs each actor sub-server reserves (its torch threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each actor sub-server reserves (fractions share "
                            "one GPU)")
    snapshot_every: int = Field(1, ge=1, description="copy an actor's adapter and optimizer to the front "
                                "end every N steps: a lost actor restarts from there (1: no completed "
                                "step is lost)")


class ServerSettings(SplitTrainingSettings):
    """The trunk server: its identity, who may connect, the model part it runs and its limits."""

    model_config = ConfigDict(extra="forbid")
    listen: str = Field("127.0.0.1:50051", description="host:port to listen on (port 0 = any free port)")
    identity: Path = Field(description="the server's private key file (from `splitfed keygen --server`)")
    allowlist: Path = Field(description="file of client public keys, or a directory of .pub files")
    tls_cert: Path | None = Field(None, description="TLS certificate (required beyond loopback)")
    tls_key: Path | None = Field(None, description="TLS private key")
    tls_client_certs: Path | None = Field(None, description="mutual TLS: a PEM file or a directory of "
                                                            "client certificates that may connect")
    insecure_loopback: bool = Field(False, description="allow plaintext transport on a loopback address")
    mode: ModeName = Field(  # type: ignore[valid-type]
        "sequential", description="sequential: one client step at a time; client-batch: the forwards "
                                  "arriving within batch_window_s run as one batch, one step per batch; "
                                  "hierarchical: sub_servers trunk adapters over one frozen base; "
                                  "auto: chosen from free memory, devices and clients (reason logged)")
    batch_window_s: float = Field(0.05, gt=0, description="client-batch: how long a batch collects")
    batch_max_rows: int = Field(64, ge=1, description="client-batch: a batch runs once it has these rows")
    backward_deadline_s: float = Field(30.0, gt=0, description="client-batch: clients whose gradient "
                                                               "comes later are dropped from the step")
    devices: list[str] | None = Field(None, description="spread the trunk's blocks over these devices in "
                                      "order, in contiguous runs balanced by bytes (e.g. [cuda:0, cuda:1]; "
                                      "`splitfed plan` shows the placement first); unset: the CPU")
    sub_servers: int = Field(2, ge=1, description="hierarchical mode: number of sub-servers")
    backend: BackendName = Field(  # type: ignore[valid-type]
        "threads", description="hierarchical mode: run the sub-servers as threads of this process over "
                               "one frozen base, or as Ray actors, each with its own base and resources "
                               "(`pip install 'splitfed[ray]'`)")
    ray: RaySettings = Field(RaySettings(), description="the Ray backend's cluster and per-actor resources")
    average_every: int = Field(4, ge=1, description="hierarchical mode: steps per sub-server between "
                                                    "averages of their trunk adapters")
    roster: list[str] | None = Field(None, description="clients served round-robin in this order "
                                                       "(reproducible); default: arrival order")
    aggregation: Literal["secure", "plain"] = Field(
        "secure", description="FedAvg rounds of the clients' head/tail adapters: secure (pairwise-masked "
                              "secure aggregation: the server learns only the weighted average; a client "
                              "dropping out mid-round is unmasked from the others' shares) or plain (the "
                              "server sees each client's adapters)")
    aggregation_max_norm_ratio: float | None = Field(
        2.0, gt=1, description="secure aggregation: reject a round whose average's L2 norm exceeds this "
                               "times the previous round's (or is not finite); every client keeps its "
                               "adapters. Unset: only finiteness is checked")
    robust_aggregation: RobustAggregationSettings = Field(
        RobustAggregationSettings(), description="an enrolled client's weight in a FedAvg round (what the "
        "server ran for it, not what it claims), robust strategies for plain rounds (FedMedian, "
        "FedTrimmedAvg, clipping) and the checks of a secure round's average from round 1 on")
    secagg_straggler_s: float = Field(5.0, gt=0, description="secure aggregation: once the clients taking "
                                      "part in a round (trained since the last one, or announced it) have "
                                      "sent a phase, or half the connected ones have, the others have this "
                                      "long after the last arrival before they are left out")
    secagg_threshold: int | None = Field(None, ge=2, description="secure aggregation: clients that must stay "
                                                                 "to the end of a round (default and "
                                                                 "minimum: a strict majority)")
    trunk_adapter: Path | None = Field(None, description="start from this saved trunk adapter (e.g. the "
                                                         "output/trunk of a training run) instead of a "
                                                         "fresh one: what generation serves")
    generation_memory_mb: float = Field(1024.0, gt=0, description="split inference: memory for the trunk "
                                                                  "KV caches of all generation streams and "
                                                                  "the working memory of the steps "
                                                                  "computing; a step beyond it is refused, "
                                                                  "never OOM")
    generation_ttl_s: float = Field(300.0, gt=0, description="split inference: free a stream's cache "
                                                             "after this long idle")
    generation_streams: int = Field(8, ge=1, description="split inference: open streams per session")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every N trunk steps (sequential mode; "
                                                       "always on SIGTERM/SIGINT, after draining open steps)")
    checkpoint_dir: Path | None = Field(None, description="where checkpoints go (default: "
                                                           "output/checkpoints)")
    resume: bool = Field(False, description="continue from the newest intact checkpoint, if there is one")
    drain_timeout_s: float = Field(60.0, gt=0, description="on shutdown, wait this long for open steps")
    exit_when_done: bool = Field(False, description="stop once every roster client has closed its session")
    max_batch: int = Field(64, ge=1, description="largest batch (rows) a request may carry; larger is "
                                                  "refused before anything is allocated")
    max_length: int = Field(2048, ge=1, description="longest sequence (tokens, cache included) a request "
                                                    "may carry")
    wire_codecs: list[CodecName] = Field(
        default_factory=lambda: list(WIRE_CODECS), min_length=1,
        description="codecs of hidden states and gradients this server accepts, either direction; announced "
                    "at the handshake, a client asking for another is refused when it connects. "
                    "int8-blockwise: a quarter of float32's bytes, lossy (see the wire page)")
    turn_timeout_s: float = Field(120.0, gt=0, description="longest wait for a turn, a FedAvg round or a "
                                                         "secure-aggregation phase before it fails")
    step_timeout_s: float = Field(60.0, gt=0, description="free a step whose backward does not come")
    session_ttl_s: float = Field(600.0, gt=0, description="free a session that goes silent")
    rpc_workers: int | None = Field(None, ge=4, description="threads serving requests (default: 2 per "
                                                           "enrolled client + 8, at least 16). A client "
                                                           "waiting for its turn or a round holds one; "
                                                           "requests beyond are refused as busy at once "
                                                           "(clients retry), never queued")
    port_file: Path | None = Field(None, description="write the bound port here once serving")
    output: Path = Field(Path("runs/server"), description="where the trunk adapter is saved on exit")
    sparse: SparseSpec | None = Field(None, description="sparse fine-tuning of the trunk's base weights next "
                                                        "to its adapter, chosen from the clients' gradients "
                                                        "(sequential mode)")
    gradient_guard: GradientGuardSettings = Field(GradientGuardSettings(), description="how the "
                                                  "gradients clients send are checked and bounded before "
                                                  "they reach the trunk (an enrolled client's poison)")
    front_door: FrontDoorSettings = Field(FrontDoorSettings(), description="bounds on peers before and "
                                                                           "after authentication")
    fair_use: FairUseSettings = Field(FairUseSettings(), description="deadlines of training steps and what "
                                                                     "befalls a client holding them")
    sealing: SealingSettings = Field(SealingSettings(), description="trusted slice: seal checkpoints and the "
                                                                    "saved trunk adapter with a key from "
                                                                    "a key provider")

    @model_validator(mode="after")
    def _partition_range_fits_the_mode(self) -> ServerSettings:
        """A range of client partitions needs a mode and aggregation that can serve each its own blocks."""
        if not self.partition.ranged:
            return self
        reasons = {"client-batch": "mode client-batch concatenates clients' hidden states into one trunk "
                                   "call, which runs one set of blocks: give every client one partition, or "
                                   "use mode sequential or hierarchical",
                   "secure": "aggregation secure masks one vector of the same adapter keys for every "
                             "client, and clients with their own partitions hold different blocks: use "
                             "aggregation plain, or one partition"}
        if self.mode == "client-batch":
            raise ValueError(f"partition.head_max/tail_max: {reasons['client-batch']}")
        if self.aggregation == "secure":
            raise ValueError(f"partition.head_max/tail_max: {reasons['secure']}")
        if getattr(self.adapter, "kind", "lora") == "prefix":
            raise ValueError("partition.head_max/tail_max: a prefix adapter covers all of a part's blocks; "
                             "clients with their own partitions take adapter kind lora")
        return self

    @model_validator(mode="after")
    def _ray_runs_hierarchical(self) -> ServerSettings:
        if self.backend == "ray" and self.mode != "hierarchical":
            raise ValueError(f"backend: ray runs the sub-servers of hierarchical mode; mode is {self.mode!r} "
                             "(set mode: hierarchical, or backend: threads)")
        return self

    @model_validator(mode="after")
    def _device_or_devices(self) -> ServerSettings:
        if self.devices and "device" in self.model_fields_set and self.device != "auto":
            raise ValueError("give device (the trunk on one device) or devices (spread over several), "
                             "not both")
        return self

    @model_validator(mode="after")
    def _devices_exist(self) -> ServerSettings:
        from splitfed.models.placement import device_capacity

        for device in self.devices or []:
            device_capacity(device)  # refuses a device this machine does not have, before any loading
        return self

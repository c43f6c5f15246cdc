"""A server mode is one module and one registry line: the registry drives `serve --mode`, and a mode
written as in docs/architecture.md serves a real client over the network."""

from __future__ import annotations

import typing

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.layout import Layout
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.modes import MODES
from splitfed.server.modes.sequential import SequentialMode
from splitfed.server.settings import ServerSettings
from splitfed.server.trunk_service import TrunkService
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.server import serve
from tests.conftest import make_batch


class ArrivalMode(SequentialMode):
    """Sequential turns in order of arrival, whatever the roster says (the architecture page's example)."""

    name = "arrival"

    @classmethod
    def from_settings(cls, settings, split):
        return cls(LocalTrunk(split.trunk, settings.optimizer), roster=None)


def test_serve_offers_every_three_part_mode_of_the_registry():
    choices = typing.get_args(ServerSettings.model_fields["mode"].annotation)
    three_part = [name for name, mode in MODES.items() if mode.layout == Layout.THREE_PART]
    assert list(choices) == [*three_part, "auto"]
    assert "two-part" in MODES and "two-part" not in choices  # chosen by partition.layout instead


def test_a_mode_written_as_documented_serves_a_client(tmp_path):
    base, _ = load_model("tiny-llama")
    split = split_model(replicate(base), Partition(1, 1))
    init_adapter(split.trunk, LoraSpec(r=4, alpha=8), 0)
    settings = ServerSettings(identity=tmp_path / "server.key", allowlist=tmp_path, model="tiny-llama",
                              roster=["bob", "alice"], optimizer=OptimizerSettings(lr=1e-2))
    mode = ArrivalMode.from_settings(settings, split)
    server_identity, alice = Identity.generate("server"), Identity.generate("alice")
    service = TrunkService(mode, ServerHandshake(server_identity, AllowList([alice.public])))
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    try:
        remote = RemoteTrunk(TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=60),
                             alice, server_identity.public)
        remote.connect((1, 3), 64)
        client_split = split_model(replicate(base), Partition(1, 1))
        for part in (client_split.head, client_split.tail):
            init_adapter(part, LoraSpec(r=4, alpha=8), 0)
        client = SplitClient("alice", client_split.head, client_split.tail, remote)
        losses = [client.train_step(make_batch(batch=2, length=6, seed=step)) for step in range(2)]
        remote.close()
    finally:
        server.stop(0)
        service.close()
    assert all(loss > 0 for loss in losses)
    status = service.status()
    assert status["mode"] == "arrival" and status["steps"] == 2 and status["progress"] == {"alice": 2}
    assert mode.roster is None and settings.roster == ["bob", "alice"]  # arrival order, roster ignored

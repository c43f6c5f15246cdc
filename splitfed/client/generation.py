"""`splitfed generate`: split inference against the trunk server, with the adapters training produced."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from splitfed.client.process import connect
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.client.settings import ClientSettings
from splitfed.inference import SplitGenerator
from splitfed.inference.server_logits import ServerLogits
from splitfed.layout import Layout
from splitfed.models import hidden_size, init_adapter, load_adapter_state
from splitfed.models.adapters import WEIGHTS_FILE, read_adapter
from splitfed.models.base_identity import base_id
from splitfed.models.devices import place_client_parts, resolve_device
from splitfed.models.party import load_client_parts
from splitfed.models.placement import DTYPES
from splitfed.privacy import SplitDefense, load_cut

log = logging.getLogger(__name__)


@dataclass
class RemoteGenerator:
    """A connected generator: the head and tail here, the trunk on the server."""

    generator: SplitGenerator
    tokenizer: object
    remote: RemoteTrunk

    def close(self) -> None:
        try:
            self.generator.close()
            self.remote.close()
        finally:
            self.remote.connection.close()


def open_generator(settings: ClientSettings, use_cache: bool = True, stream: int = 0) -> RemoteGenerator:
    """Load the model's head and tail with the trained adapters in ``settings.output`` (the fresh
    adapters, with a warning, where there are none) and open a session with the trunk server."""
    loaded = load_client_parts(settings.model, settings.partition.partition(), settings.partition.layout,
                               DTYPES[settings.dtype])
    split, tokenizer = loaded.split, loaded.tokenizer
    for part in (split.head, split.tail):
        init_adapter(part, settings.adapter, settings.seed)
        directory = settings.output / part.role
        if (directory / WEIGHTS_FILE).exists():
            load_adapter_state(part, read_adapter(directory)[1])
            log.info("%s adapter loaded from %s", part.role, directory)
        else:
            log.warning("no trained %s adapter in %s: generating with the untrained one", part.role,
                        directory)
    place_client_parts(split, resolve_device(settings.device))
    expected = (settings.partition.head, loaded.num_layers - settings.partition.tail)
    width = hidden_size(split.head.config)
    remote = connect(settings, expected, width, str(split.head.config.model_type), base_id(loaded.source))
    defense = None
    if settings.privacy.enabled:
        defense = SplitDefense(settings.privacy, settings.steps, batch_size=settings.batch_size,
                               hidden_size=width)
        if defense.cut is not None and not load_cut(defense.cut, settings.output / "cut"):
            log.warning("no trained learned defense in %s: generating through an untrained one",
                        settings.output / "cut")
        if defense.cut is not None:
            defense.cut.to(next(split.head.parameters()).device)
    tail = ServerLogits() if settings.partition.layout == Layout.TWO_PART else split.tail
    generator = SplitGenerator(split.head, tail, remote, stream, use_cache, defense)  # type: ignore[arg-type]
    return RemoteGenerator(generator, tokenizer, remote)

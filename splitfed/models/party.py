"""Load what one party of a federation runs, and nothing else.

A client loads its head and tail (the embedding, its blocks, the final norm and the LM head; a tied
embedding once); the server its trunk (with a two-part layout, also the final norm and LM head); a
Ray sub-server its trunk. ``load_parts`` builds those parts empty and reads only their tensors,
straight into the target dtype (``part_loading``); the tiny built-in models are built whole from
their seed and cut down to the part.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from splitfed.models.families import UnsupportedModelError, family_of_config
from splitfed.models.part_loading import LoadReport, PartNeeds, load_part_model, part_bytes, prune
from splitfed.models.part_manifest import PartManifest
from splitfed.models.sources import ModelSource, resolve
from splitfed.models.split import ALL_ROLES, Partition, SplitModel, split_model
from splitfed.models.tiny import build_tiny

log = logging.getLogger(__name__)

CLIENT_ROLES = ("head", "tail")
SERVER_ROLES = ("trunk",)
TWO_PART_SERVER_ROLES = ("trunk", "tail")


@dataclass
class LoadedParts:
    """The parts one process holds, its tokenizer, and what loading them cost."""

    split: SplitModel  # the roles not loaded are None
    model: Any  # the model object the parts share: other parties' modules are ``NotLoaded``
    tokenizer: Any  # None where not asked for (the server needs none)
    source: ModelSource
    num_layers: int
    report: LoadReport
    model_needs: PartNeeds  # what was built and read


def needs_of(roles: tuple[str, ...], partition: Partition, num_layers: int) -> PartNeeds:
    """The blocks and end modules ``roles`` run under ``partition``."""
    head, trunk, tail = partition.ranges(num_layers)
    by_role = {"head": head, "trunk": trunk, "tail": tail}
    blocks = frozenset(index for role in roles for index in by_role[role])
    return PartNeeds(blocks, embedding="head" in roles, final="tail" in roles)


def load_parts(name_or_path: str | os.PathLike[str], partition: Partition, roles: tuple[str, ...] = ALL_ROLES,
               dtype: torch.dtype = torch.float32, seed: int = 0, tokenizer: bool = True) -> LoadedParts:
    """The ``roles`` of ``name_or_path`` split by ``partition``, each module built and read only if one
    of those roles runs it (and its tokenizer, unless ``tokenizer`` is False). A partition the model
    cannot take is refused before any weight is read."""
    unknown = set(roles) - set(ALL_ROLES)
    if unknown or not roles:
        raise ValueError(f"roles must be among {ALL_ROLES}, got {roles}")
    source = resolve(name_or_path, dtype)
    config = source.config()
    try:
        family = family_of_config(config)
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"{source.given}: {error}") from None
    num_layers = family.num_layers(config)
    partition.fits(num_layers)
    needs = needs_of(roles, partition, num_layers)
    manifest = PartManifest.read(source.directory) if source.directory is not None else None
    if manifest is not None:
        manifest.check_covers(needs, source.directory, str(dtype).removeprefix("torch."))
    if source.tiny is not None:
        started = time.perf_counter()
        model, _ = build_tiny(source.tiny, seed=seed)
        prune(model, family, needs)
        model = model.to(dtype)
        held = part_bytes(model)
        report = LoadReport(time.perf_counter() - started, 0, 0, held)
    else:
        assert source.directory is not None
        expected = None if manifest is None else manifest.digests()
        model, report = load_part_model(source.directory, needs, dtype, expected)
    split = split_model(model, partition, roles)
    return LoadedParts(split, model, source.tokenizer() if tokenizer else None, source, num_layers, report,
                       needs)


def party_roles(party: str, layout: str) -> tuple[str, ...]:
    """The roles a "client" or "server" loads in ``layout``."""
    two_part = str(layout) == "two-part"
    if party == "client":
        return ("head",) if two_part else CLIENT_ROLES
    if party == "server":
        return TWO_PART_SERVER_ROLES if two_part else SERVER_ROLES
    raise ValueError(f"party must be client or server, got {party!r}")


def load_client_parts(name_or_path: str | os.PathLike[str], partition: Partition, layout: str,
                      dtype: torch.dtype = torch.float32) -> LoadedParts:
    """A client's head and tail. In the two-part layout the server runs the LM head: the client loads
    only its head, and its tail is an empty part (no blocks, nothing loaded, nothing trained)."""
    loaded = load_parts(name_or_path, partition, party_roles("client", layout), dtype)
    if loaded.split.tail is None:
        loaded.split.tail = split_model(loaded.model, partition, ("tail",)).tail
    return loaded


def load_server_parts(name_or_path: str | os.PathLike[str], partition: Partition, layout: str,
                      dtype: torch.dtype = torch.float32) -> LoadedParts:
    """The server's trunk (widest over the clients' partitions); in the two-part layout also the final
    norm and LM head."""
    return load_parts(name_or_path, partition, party_roles("server", layout), dtype, tokenizer=False)

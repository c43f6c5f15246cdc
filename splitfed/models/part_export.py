"""``splitfed parts``: write one party's part as a self-contained directory it can train from alone.

The part is loaded like a party loads it (only its tensors are read), then written with the base's
config.json, the tokenizer, its tensors as safetensors shards (tied tensors once) and a manifest with
the base's digest, the partition and every tensor's SHA-256. A hospital is shipped its client part
and never downloads the trunk.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from splitfed.models.base_identity import base_id
from splitfed.models.part_manifest import PartManifest
from splitfed.models.party import load_parts, party_roles
from splitfed.models.split import Partition
from splitfed.models.weight_files import DEFAULT_SHARD_BYTES, ShardWriter, tensor_sha256

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}


def export_part(model: str, party: str, partition: Partition, layout: str, dtype: torch.dtype,
                output: Path, shard_bytes: int = DEFAULT_SHARD_BYTES) -> PartManifest:
    """Write ``party``'s part ("client" or "server") of ``model`` to ``output`` (a new or empty
    directory), atomically."""
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists and is not empty: choose a new directory")
    roles = party_roles(party, layout)
    loaded = load_parts(model, partition, roles, dtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        writer = ShardWriter(staging, shard_bytes)
        seen: set[int] = set()
        digests: dict[str, dict] = {}
        for name, tensor in loaded.model.state_dict().items():
            if tensor.is_meta or tensor.data_ptr() in seen:
                continue  # a tied tensor is stored once, under its first name
            seen.add(tensor.data_ptr())
            writer.add(name, tensor)
            digests[name] = {"sha256": tensor_sha256(tensor), "shape": list(tensor.shape),
                             "dtype": SAFETENSORS_DTYPES.get(tensor.dtype, str(tensor.dtype))}
        files = writer.finish()
        for name, file in files.items():
            digests[name]["file"] = file
        source = loaded.source
        if source.directory is not None:
            shutil.copyfile(source.directory / "config.json", staging / "config.json")
        else:
            loaded.model.config.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        needs = loaded.model_needs
        manifest = PartManifest(
            model=model, base_id=base_id(source), model_type=str(loaded.model.config.model_type),
            num_layers=loaded.num_layers, head=partition.head, tail=partition.tail, layout=str(layout),
            roles=roles, blocks=tuple(sorted(needs.blocks)), embedding=needs.embedding, final=needs.final,
            dtype=str(dtype).removeprefix("torch."), tensors=digests)
        manifest.write(staging)
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote the %s to %s: %d tensors, %.1f MiB", manifest.describe(), output, len(digests),
             writer.total_bytes / 2**20)
    return manifest

"""Parts as artefacts: `splitfed parts` writes a directory a party loads alone, exactly; its manifest
names the base and every tensor's digest, and a part of another partition is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from splitfed.models import Partition, load_model, split_model
from splitfed.models.base_identity import MANIFEST_FILE, base_id
from splitfed.models.part_export import export_part
from splitfed.models.part_manifest import PartMismatchError
from splitfed.models.party import load_client_parts, load_server_parts
from splitfed.models.sources import resolve
from splitfed.models.weight_files import ModelFileError, tensor_sha256
from tests.conftest import make_batch

PARTITION = Partition(1, 1)


def _logits(head, trunk, tail, batch):
    mask = batch["attention_mask"]
    return tail(trunk(head(batch["input_ids"], mask), mask), mask)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma2", "tiny-qwen2-moe"])
def test_a_client_trains_from_its_part_alone_and_computes_exactly(name, tmp_path):
    export_part(name, "client", PARTITION, "three-part", torch.float32, tmp_path / "client")
    export_part(name, "server", PARTITION, "three-part", torch.float32, tmp_path / "server")
    shipped = tmp_path / "shipped"
    shutil.copytree(tmp_path / "client", shipped)  # the client has its directory and nothing else
    client = load_client_parts(shipped, PARTITION, "three-part")
    server = load_server_parts(tmp_path / "server", PARTITION, "three-part")
    model, _ = load_model(name)
    reference = split_model(model, PARTITION)
    batch = make_batch()
    assert torch.equal(_logits(client.split.head, server.split.trunk, client.split.tail, batch),
                       _logits(reference.head, reference.trunk, reference.tail, batch))
    stored = {key for file in shipped.glob("*.safetensors") for key in safe_open(file, "pt").keys()}  # noqa: SIM118
    assert not any(".layers.1." in key or ".layers.2." in key or ".h.1." in key for key in stored)
    assert client.report.tensors_read == len(stored)


def test_the_manifest_names_the_base_partition_and_every_tensor(tmp_path):
    source = tmp_path / "source"
    model, tokenizer = load_model("tiny-qwen2")  # tied embeddings
    model.save_pretrained(source, max_shard_size="40KB")
    tokenizer.save_pretrained(source)
    manifest = export_part(str(source), "client", PARTITION, "three-part", torch.bfloat16, tmp_path / "part")
    written = json.loads((tmp_path / "part" / MANIFEST_FILE).read_text())
    assert written["base_id"] == base_id(resolve(source)) == manifest.base_id
    assert (written["head"], written["tail"], written["dtype"]) == (1, 1, "bfloat16")
    assert written["blocks"] == [0, 3] and written["embedding"] and written["final"]
    for name, entry in written["tensors"].items():
        with safe_open(tmp_path / "part" / entry["file"], "pt") as handle:
            tensor = handle.get_tensor(name)
        assert tensor.dtype == torch.bfloat16
        assert tensor_sha256(tensor) == entry["sha256"]
    assert "lm_head.weight" not in written["tensors"]  # tied to the embedding: stored once
    # the base id is the same whichever party computes it, and differs for another model
    assert base_id(resolve(tmp_path / "part")) == base_id(resolve(source))
    other = tmp_path / "other"
    load_model("tiny-llama")[0].save_pretrained(other)
    assert base_id(resolve(other)) != base_id(resolve(source))


def test_a_part_of_another_partition_or_dtype_is_refused(tmp_path):
    export_part("tiny-llama", "client", PARTITION, "three-part", torch.float32, tmp_path / "client")
    with pytest.raises(PartMismatchError, match=r"also needs blocks \[1\].*splitfed parts"):
        load_client_parts(tmp_path / "client", Partition(2, 1), "three-part")
    with pytest.raises(PartMismatchError, match="holds float32 weights"):
        load_client_parts(tmp_path / "client", PARTITION, "three-part", torch.bfloat16)
    export_part("tiny-llama", "server", PARTITION, "three-part", torch.float32, tmp_path / "server")
    with pytest.raises(PartMismatchError, match="the embedding, the final norm and LM head, blocks"):
        load_client_parts(tmp_path / "server", PARTITION, "three-part")


def test_a_changed_tensor_is_caught_by_its_digest(tmp_path):
    export_part("tiny-llama", "client", PARTITION, "three-part", torch.float32, tmp_path / "client")
    (shard,) = (tmp_path / "client").glob("*.safetensors")
    data = bytearray(shard.read_bytes())
    data[-8] ^= 0xFF  # one byte of the last tensor's data; the header is intact
    shard.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"does not match the SHA-256 in the part's manifest"):
        load_client_parts(tmp_path / "client", PARTITION, "three-part")


def test_export_refuses_a_non_empty_directory_and_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(FileExistsError):
        export_part("tiny-llama", "client", PARTITION, "three-part", torch.float32, tmp_path / "used")
    with pytest.raises(ValueError, match="leaves no block"):
        export_part("tiny-llama", "server", Partition(2, 2), "three-part", torch.float32, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]


def test_a_two_part_server_part_holds_the_lm_head(tmp_path):
    partition = Partition(1, 0)
    export_part("tiny-gpt2", "server", partition, "two-part", torch.float32, tmp_path / "server")
    export_part("tiny-gpt2", "client", partition, "two-part", torch.float32, tmp_path / "client")
    server = load_server_parts(tmp_path / "server", partition, "two-part")
    client = load_client_parts(tmp_path / "client", partition, "two-part")
    assert not list(client.split.tail.parameters())  # the two-part client has no LM head
    model, _ = load_model("tiny-gpt2")
    reference = split_model(model, partition)
    batch = make_batch()
    assert torch.equal(_logits(client.split.head, server.split.trunk, server.split.tail, batch),
                       _logits(reference.head, reference.trunk, reference.tail, batch))

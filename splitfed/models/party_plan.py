"""How much memory each party of a federation needs, from the model's configuration alone.

For a client (embedding, head and tail blocks, final norm and LM head) and the server (the trunk; with
the two-part layout also the final norm and LM head), the estimate adds up:

* **weights**: the part's parameters and buffers in the base dtype (a tied embedding once);
* **adapter**: LoRA weights, their gradients and AdamW's two moments, all float32;
* **activations**: what one training step keeps for its backward, measured by running the part's
  blocks (and the LM head and loss) on PyTorch's meta device at the given batch and length, plus the
  largest transient tensor; the server keeps one client's step at a time (sequential mode) or
  ``clients_per_step`` (client-batch);
* **KV cache**: for ``cache_tokens`` of generation through the part's blocks;
* **loading**: while the part loads, a few tensors are in flight in the file's dtype before they are
  cast (transformers' loader reads up to four at once, in key order): the largest such moment;
* **tokenizer** (a client) and **serving** (gRPC threads, the data, the metrics plot): given by the
  caller (``splitfed plan`` loads the tokenizer to measure it; serving is a constant measured by
  ``benchmarks/memory.py``);
* **runtime**: the process with torch, transformers, peft and splitfed imported (given: the command
  measures it in its own process).

Loading and training do not overlap: the peak is the runtime, the weights and the cache plus the
larger of the loading transient and what training holds (tokenizer, adapter, activations, serving).

Nothing is allocated: the model is built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from splitfed.models.adapters import init_adapter, lora_config
from splitfed.models.families import family_of_config
from splitfed.models.part_loading import PartNeeds, prune, skeleton, tie_kept
from splitfed.models.split import Partition, split_model

MIB = 2**20
ADAPTER_STATE_BYTES = 4 * 4  # float32 weight, gradient and AdamW's two moments
LOADING_TENSORS_IN_FLIGHT = 4  # transformers' loader materialises this many tensors at once
# What a party holds beyond its model while it serves or trains: gRPC threads and buffers, the data,
# the allocator's slack, the metrics plot; measured by benchmarks/memory.py (SmolLM2, 1.1B and 7B
# shapes): it does not grow with the model.
SERVING_BYTES = {"client": 64 * MIB, "server": 96 * MIB}


@dataclass(frozen=True)
class PartyMemory:
    """One party's estimated memory, in bytes."""

    party: str
    roles: tuple[str, ...]
    blocks: tuple[int, ...]
    weight_bytes: int
    adapter_bytes: int
    activation_bytes: int
    cache_bytes: int
    loading_bytes: int
    runtime_bytes: int
    tokenizer_bytes: int = 0
    serving_bytes: int = 0

    @property
    def training_bytes(self) -> int:
        return self.tokenizer_bytes + self.adapter_bytes + self.activation_bytes + self.serving_bytes

    @property
    def peak_bytes(self) -> int:
        """Runtime, weights and cache, plus the larger of the loading transient and training's needs."""
        return (self.runtime_bytes + self.weight_bytes + self.cache_bytes
                + max(self.training_bytes, self.loading_bytes))

    def to_json(self) -> dict[str, Any]:
        return {"party": self.party, "roles": list(self.roles), "blocks": list(self.blocks),
                "weight_bytes": self.weight_bytes, "adapter_bytes": self.adapter_bytes,
                "activation_bytes": self.activation_bytes, "cache_bytes": self.cache_bytes,
                "loading_bytes": self.loading_bytes, "runtime_bytes": self.runtime_bytes,
                "tokenizer_bytes": self.tokenizer_bytes, "serving_bytes": self.serving_bytes,
                "peak_bytes": self.peak_bytes}

    def describe(self) -> str:
        parts = [("runtime", self.runtime_bytes), ("weights", self.weight_bytes),
                 ("adapter + AdamW", self.adapter_bytes), ("activations", self.activation_bytes),
                 ("tokenizer", self.tokenizer_bytes), ("serving", self.serving_bytes),
                 ("KV cache", self.cache_bytes), ("loading, in flight", self.loading_bytes)]
        shown = ", ".join(f"{name} {value / MIB:,.0f}" for name, value in parts)
        return f"{self.party}: peak {self.peak_bytes / MIB:,.0f} MiB ({shown} MiB)"


def _tensor_bytes(tensors: list[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


class _SavedTensors:
    """Counts the distinct tensors autograd keeps for backward, leaving out the parameters."""

    def __init__(self, parameters: list[torch.Tensor]) -> None:
        self.parameters = {id(p) for p in parameters}
        self.kept: dict[int, torch.Tensor] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.parameters and id(tensor) not in self.parameters:
            self.kept.setdefault(id(base), base)
        return tensor

    @property
    def bytes(self) -> int:
        return _tensor_bytes(list(self.kept.values()))

    @property
    def largest(self) -> int:
        return max((t.numel() * t.element_size() for t in self.kept.values()), default=0)


def step_activations(split: Any, roles: tuple[str, ...], batch: int, length: int,
                     device: str = "meta") -> int:
    """Bytes one training step keeps for backward in ``roles``' parts, plus its largest transient
    tensor, measured on ``device`` (the meta device: shapes only, no memory)."""
    family = split.family
    parts = [split.parts[role] for role in roles if role in split.parts]
    parameters = [p for part in parts for p in part.parameters()]
    saved = _SavedTensors(parameters)
    positions = torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    width = family.hidden_size(split.config)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
        for part in parts:
            part.train(True)
            if part.role == "head":
                hidden = family.embed(part, torch.zeros(batch, length, dtype=torch.long, device=device),
                                      positions)
            else:
                hidden = torch.zeros(batch, length, width, device=device, requires_grad=True,
                                     dtype=part.compute_dtype)
            inputs = family.block_inputs(part, hidden, positions)
            for index in part.layer_indices:
                hidden = family.run_block(part.get_submodule(family.layer_path(index)), hidden, None, None,
                                          inputs)
            if part.role == "tail":
                logits = family.finalize(part, hidden)
                labels = torch.zeros(batch * length, dtype=torch.long, device=device)
                torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels)
    return saved.bytes + 2 * saved.largest  # the backward's gradients of the largest tensors in flight


def _natural_key(name: str) -> list[Any]:
    return [(0, int(piece)) if piece.isdigit() else (1, piece) for piece in name.split(".")]


def loading_transient(model: torch.nn.Module, dtype: torch.dtype, file_dtype: torch.dtype) -> int:
    """The most memory beyond the final weights while they load: tensors are read in key order, up to
    ``LOADING_TENSORS_IN_FLIGHT`` at once, each in the file's dtype until it is cast (no copy when the
    dtypes agree)."""
    tensors = sorted(model.state_dict().items(), key=lambda item: _natural_key(item[0]))
    seen: set[int] = set()
    sizes = []
    for _, tensor in tensors:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        sizes.append(tensor.numel())
    element = torch.tensor([], dtype=dtype).element_size()
    file_element = 0 if file_dtype == dtype else torch.tensor([], dtype=file_dtype).element_size()
    total = sum(sizes) * element
    loaded, peak = 0, 0
    for index in range(len(sizes)):
        window = sizes[index:index + LOADING_TENSORS_IN_FLIGHT]
        in_flight = sum(window) * (element + file_element)
        peak = max(peak, loaded + in_flight)
        loaded += sizes[index] * element
    return max(0, peak - total)


def _kv_bytes_per_token(config: Any, blocks: int, dtype: torch.dtype) -> int:
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    return 2 * heads * head_dim * torch.tensor([], dtype=dtype).element_size() * blocks


def _meta_parts(config: Any, family: Any, needs: PartNeeds, partition: Partition, roles: tuple[str, ...],
                dtype: torch.dtype, lora_rank: int) -> tuple[torch.nn.Module, Any]:
    """The party's modules on the meta device, with LoRA of ``lora_rank`` on every part."""
    from splitfed.models.adapters import LoraSpec

    model = skeleton(config, dtype)
    prune(model, family, needs)
    model = model.to("meta")
    tie_kept(model)
    split = split_model(model, partition, roles)
    spec = LoraSpec(r=lora_rank)
    lora_config(spec, family.name)  # an unknown family's targets are refused here
    for part in split.parts.values():
        init_adapter(part, spec, 0)
    return model, split


def plan_party(config: Any, party: str, partition: Partition, layout: str = "three-part",
               dtype: torch.dtype = torch.bfloat16, batch: int = 4, length: int = 256, lora_rank: int = 8,
               cache_tokens: int = 0, clients_per_step: int = 1, runtime: int = 0,
               file_dtype: torch.dtype | None = None, tokenizer: int = 0, serving: int | None = None
               ) -> PartyMemory:
    """``party``'s ("client" or "server") memory for one training step of ``batch`` x ``length`` tokens
    (the server: ``clients_per_step`` such steps at once), LoRA of ``lora_rank`` on every block and
    ``cache_tokens`` of KV cache; ``file_dtype`` is the dtype the weights are stored in (default:
    ``dtype``); ``runtime``: the process's memory before any weight (its resident memory once torch,
    transformers, peft and splitfed's client and server are imported); ``tokenizer``: the client's
    tokenizer in memory; ``serving``: gRPC, data and plots (default: ``SERVING_BYTES``)."""
    from splitfed.models.party import needs_of, party_roles

    family = family_of_config(config)
    num_layers = family.num_layers(config)
    partition.fits(num_layers)
    roles = party_roles(party, layout)
    needs: PartNeeds = needs_of(roles, partition, num_layers)
    model, split = _meta_parts(config, family, needs, partition, roles, dtype, lora_rank)
    frozen = [p for p in model.parameters() if not p.requires_grad]  # the base, without the adapters
    weights = _tensor_bytes([*frozen, *model.buffers()])
    adapter = sum(p.numel() for part in split.parts.values() for p in part.parameters() if p.requires_grad)
    steps = clients_per_step if party == "server" else 1
    try:
        activations = step_activations(split, roles, batch * steps, length)
    except RuntimeError:  # PyTorch's meta kernel of MoE's grouped matmul takes bfloat16 only
        _, bf16_split = _meta_parts(config, family, needs, partition, roles, torch.bfloat16, lora_rank)
        scale = torch.tensor([], dtype=dtype).element_size() / 2
        activations = int(step_activations(bf16_split, roles, batch * steps, length) * scale)
    loading = loading_transient(model, dtype, file_dtype or dtype)
    return PartyMemory(party, roles, tuple(sorted(needs.blocks)), weights, adapter * ADAPTER_STATE_BYTES,
                       activations, _kv_bytes_per_token(config, len(needs.blocks), dtype) * cache_tokens,
                       loading, runtime, tokenizer if party == "client" else 0,
                       SERVING_BYTES[party] if serving is None else serving)

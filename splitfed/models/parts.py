"""The three parts of a split model: client head, server trunk, client tail.

Each part is an ``nn.Module`` that *shares* (does not copy) the whole model's modules and names them
by their path in the whole model (``model.layers.12.self_attn.q_proj``), so an adapter trained on a
part is, key for key, an adapter of the whole model.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from splitfed.models.families import FULL_ATTENTION, FamilyAdapter

Role = Literal["head", "trunk", "tail"]

_MASK_BUILDERS = {
    FULL_ATTENTION: create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` under dotted ``path`` of ``root``, creating empty containers on the way."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        if name not in node._modules:
            node.add_module(name, nn.Module())
        node = node._modules[name]
    node.add_module(leaf, module)


def set_training(module: nn.Module, mode: bool) -> None:
    """``module.train(mode)``, skipped when the module is in that mode already: ``train`` walks every
    submodule (about 1 ms for SmolLM2's trunk), which per generated token is a cost worth avoiding.
    Relies on submodules following their root, which splitfed keeps when it attaches adapters."""
    if module.training != mode:
        module.train(mode)


def positions_from_mask(
    attention_mask: torch.Tensor | None, query_length: int, past_length: int, device: torch.device
) -> torch.Tensor:
    """Position ids of the last ``query_length`` tokens; left padding is skipped, as HF generate does.

    ``attention_mask`` covers past and current tokens (1 = real, 0 = padding).
    """
    if attention_mask is None:
        return torch.arange(past_length, past_length + query_length, device=device).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    return positions[:, -query_length:]


def _moved(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (through dicts, tuples and lists) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_moved(item, device) for item in value)
    return value


class SplitPart(nn.Module):
    """One contiguous slice of a causal LM: optionally the embedding, some blocks, optionally the head."""

    def __init__(
        self,
        role: Role,
        model: nn.Module,
        family: FamilyAdapter,
        layer_indices: range,
    ) -> None:
        super().__init__()
        self.role: Role = role
        self.family = family
        self.config = model.config
        self.layer_indices = tuple(layer_indices)
        self.prefix: nn.Module | None = None
        paths: list[str] = list(family.shared_paths)
        if role == "head":
            paths = list(family.embedding_paths) + paths
        paths += [family.layer_path(i) for i in self.layer_indices]
        if role == "tail":
            paths += list(family.final_paths)
        for path in paths:
            _attach(self, path, model.get_submodule(path))
        types = family.layer_types(self.config)
        self._layer_types = {i: types[i] for i in self.layer_indices}
        self.placement: dict[int, torch.device] | None = None  # block -> device (models/placement.py)

    @property
    def device(self) -> torch.device:
        """Where the part's first block (or, without blocks, its first weight) computes."""
        if self.placement is not None and self.layer_indices:
            return self.placement[self.layer_indices[0]]
        return next(self.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the part's frozen base weights, in which its blocks compute (of its first
        weight when nothing is frozen: a public copy without adapters)."""
        first = None
        for parameter in self.parameters():
            if parameter.is_floating_point():
                if not parameter.requires_grad:
                    return parameter.dtype
                first = parameter if first is None else first
        return torch.float32 if first is None else first.dtype

    # -- caches and masks ---------------------------------------------------------------------------
    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this part's layers (indexed by global layer number)."""
        return DynamicCache(config=self.config)

    @property
    def prefix_length(self) -> int:
        return 0 if self.prefix is None else int(self.prefix.num_virtual_tokens)

    def past_length(self, cache: DynamicCache | None, blocks: tuple[int, int] | None = None) -> int:
        """Number of real (non-prefix) tokens already in ``cache`` (of the first block run)."""
        indices = self.blocks_run(blocks)
        if cache is None or not indices:
            return 0
        return max(0, cache.get_seq_length(indices[0]) - self.prefix_length)

    def blocks_run(self, blocks: tuple[int, int] | None = None) -> tuple[int, ...]:
        """The part's block indices within ``[start, end)`` (all of them when ``blocks`` is None); a
        range outside the part is refused."""
        if blocks is None:
            return self.layer_indices
        start, end = blocks
        if not self.layer_indices or start >= end or start < self.layer_indices[0] \
                or end > self.layer_indices[-1] + 1:
            span = f"[{self.layer_indices[0]}:{self.layer_indices[-1] + 1}]" if self.layer_indices else "none"
            raise ValueError(f"blocks [{start}:{end}] are not within this {self.role}'s blocks {span}")
        return tuple(i for i in self.layer_indices if start <= i < end)

    def _masks(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any, positions: Any,
        indices: tuple[int, ...],
    ) -> dict[str, Any]:
        masks: dict[str, Any] = {}
        for index in indices:
            kind = self._layer_types[index]
            if kind not in masks:
                masks[kind] = _MASK_BUILDERS[kind](
                    config=self.config,
                    inputs_embeds=hidden,
                    attention_mask=attention_mask,
                    past_key_values=cache,
                    position_ids=positions,
                    layer_idx=index,
                )
        return masks

    def _run_blocks(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: DynamicCache | None,
        blocks: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        indices = self.blocks_run(blocks)
        if not indices:
            return hidden
        if blocks is not None and self.prefix is not None and indices != self.layer_indices:
            raise ValueError("a prefix adapter runs over all of a part's blocks, not a sub-range")
        first = self.placement[indices[0]] if self.placement is not None else self.device
        if hidden.device != first:  # from the wire (CPU) onto the first block's device
            hidden = hidden.to(first)
            attention_mask = None if attention_mask is None else attention_mask.to(first)
            position_ids = None if position_ids is None else position_ids.to(first)
        dtype = self.compute_dtype
        if hidden.is_floating_point() and hidden.dtype != dtype:
            hidden = hidden.to(dtype)  # from the wire (float32) into a half-precision part
        batch, length = hidden.shape[:2]
        if self.prefix is not None:
            if cache is None:
                cache = self.new_cache()
            if cache.get_seq_length(self.layer_indices[0]) == 0:
                self.prefix.fill_cache(cache, self.layer_indices, batch)
            if attention_mask is not None:
                ones = attention_mask.new_ones(batch, self.prefix_length)
                attention_mask = torch.cat([ones, attention_mask], dim=-1)
        if position_ids is None:
            real_mask = None if attention_mask is None else attention_mask[:, self.prefix_length :]
            position_ids = positions_from_mask(
                real_mask, length, self.past_length(cache, blocks), hidden.device
            )
        masks = self._masks(hidden, attention_mask, cache, position_ids, indices)
        inputs = self.family.block_inputs(self, hidden, position_ids)
        for index in indices:
            block = self.get_submodule(self.family.layer_path(index))
            if self.placement is not None and hidden.device != self.placement[index]:
                device = self.placement[index]  # the next block lives on another device
                hidden, masks, inputs = hidden.to(device), _moved(masks, device), _moved(inputs, device)
            mask = masks[self._layer_types[index]]
            hidden = self.family.run_block(block, hidden, mask, cache, inputs)
        return hidden

    def _positions_for_embedding(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        if position_ids is not None:
            return position_ids
        return positions_from_mask(
            attention_mask, input_ids.shape[1], self.past_length(cache), input_ids.device
        )


class HeadPart(SplitPart):
    """Client head: embedding and the first blocks. ``forward(input_ids) -> hidden``."""

    def __init__(self, model: nn.Module, family: FamilyAdapter, layer_indices: range) -> None:
        super().__init__("head", model, family, layer_indices)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
    ) -> torch.Tensor:
        device = self.device
        if input_ids.device != device:  # token ids from the CPU onto the embedding's device
            input_ids = input_ids.to(device)
            attention_mask = None if attention_mask is None else attention_mask.to(device)
            position_ids = None if position_ids is None else position_ids.to(device)
        positions = self._positions_for_embedding(
            input_ids, attention_mask, position_ids, past_key_values
        )
        hidden = self.family.embed(self, input_ids, positions)
        return self._run_blocks(hidden, attention_mask, positions, past_key_values)


class TrunkPart(SplitPart):
    """Server trunk: the middle blocks. ``forward(hidden) -> hidden``; ``blocks=(start, end)`` runs only
    those of its blocks (a client whose own head or tail holds the others)."""

    def __init__(self, model: nn.Module, family: FamilyAdapter, layer_indices: range) -> None:
        super().__init__("trunk", model, family, layer_indices)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        blocks: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        return self._run_blocks(hidden, attention_mask, position_ids, past_key_values, blocks)


class TailPart(SplitPart):
    """Client tail: the last blocks, final norm and LM head. ``forward(hidden) -> logits``."""

    def __init__(self, model: nn.Module, family: FamilyAdapter, layer_indices: range) -> None:
        super().__init__("tail", model, family, layer_indices)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """``last_only``: the logits of the last position alone (B, 1, V), as generation needs; the
        LM head of a long prompt's other positions is skipped (norm and head act per position)."""
        hidden = self._run_blocks(hidden, attention_mask, position_ids, past_key_values)
        if hidden.device != (device := self.device):  # a tail without blocks: straight to the LM head
            hidden = hidden.to(device)
        if last_only:
            hidden = hidden[:, -1:]
        return self.family.finalize(self, hidden)

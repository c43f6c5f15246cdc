"""Merge the three parts' adapters back into one ordinary Hugging Face model directory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PrefixTuningConfig
from safetensors.torch import save_file
from torch import nn

from splitfed.models.adapters import (
    PEFT_PREFIX,
    PROMPT_KEY,
    WEIGHTS_FILE,
    AdapterError,
    read_adapter,
    read_sparse,
)
from splitfed.models.loading import load_model
from splitfed.models.sparse import merge_sparse_into

log = logging.getLogger(__name__)


def merge_lora_into(model: nn.Module, state: dict[str, torch.Tensor], config: LoraConfig) -> int:
    """Add ``alpha / r * B @ A`` of every LoRA pair in ``state`` to ``model``'s base weights.

    Returns the number of weights changed. GPT-2's Conv1D stores weights transposed
    (``fan_in_fan_out``), which the config says.
    """
    scale = config.lora_alpha / config.r
    changed = 0
    with torch.no_grad():
        for key in sorted(state):
            if not key.endswith(".lora_A.weight"):
                continue
            module_path = key[len(PEFT_PREFIX) : -len(".lora_A.weight")]
            down = state[key].float()
            up = state[key.replace(".lora_A.", ".lora_B.")].float()
            delta = scale * (up @ down)
            weight = model.get_submodule(module_path).weight
            if config.fan_in_fan_out:
                delta = delta.T
            weight.add_(delta.to(weight.dtype))
            changed += 1
    return changed


def export_merged(
    base_model: str,
    adapter_dirs: list[str | Path],
    out_dir: str | Path,
) -> Path:
    """Load ``base_model``, merge the LoRA adapters and sparse deltas of ``adapter_dirs`` (head, trunk,
    tail) into its weights and save a plain HF model directory (``transformers`` loads it with no
    splitfed code).

    Prefix adapters cannot be folded into weights: they are concatenated into one whole-model peft
    prefix adapter saved under ``out_dir/prefix_adapter``.
    """
    model, tokenizer = load_model(base_model)
    prefixes: list[tuple[list[int], torch.Tensor, PrefixTuningConfig]] = []
    for directory in adapter_dirs:
        meta, state = read_adapter(directory)
        if meta["model_type"] != model.config.model_type:
            raise AdapterError(
                f"{directory} was trained on a {meta['model_type']} model, base is "
                f"{model.config.model_type}"
            )
        if meta["kind"] == "lora":
            count = merge_lora_into(model, state, LoraConfig.from_pretrained(str(directory)))
            log.info("merged %d LoRA weights of the %s", count, meta["role"])
        elif meta["kind"] == "prefix":
            config = PrefixTuningConfig.from_pretrained(str(directory))
            prefixes.append((meta["layers"], state[PROMPT_KEY], config))
        sparse = read_sparse(directory)
        if sparse:
            log.info("merged %d sparse entries of the %s", merge_sparse_into(model, sparse), meta["role"])
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if prefixes:
        _save_whole_prefix(prefixes, model.config, out_dir / "prefix_adapter", base_model)
    return out_dir


def _save_whole_prefix(
    prefixes: list[tuple[list[int], torch.Tensor, PrefixTuningConfig]],
    model_config: object,
    directory: Path,
    base_model: str,
) -> None:
    layers = [layer for meta_layers, _, _ in prefixes for layer in meta_layers]
    tokens = {config.num_virtual_tokens for _, _, config in prefixes}
    total = int(model_config.num_hidden_layers)
    if sorted(layers) != list(range(total)) or len(tokens) != 1:
        raise AdapterError(
            "a whole-model prefix adapter needs a prefix on every block with one length; got "
            f"blocks {sorted(layers)} and lengths {sorted(tokens)}"
        )
    ordered = sorted(prefixes, key=lambda item: item[0][0])
    weight = torch.cat([w for _, w, _ in ordered], dim=1).contiguous()
    first = ordered[0][2]
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=first.num_virtual_tokens,
        num_layers=total,
        token_dim=first.token_dim,
        num_attention_heads=first.num_attention_heads,
        base_model_name_or_path=base_model,
    )
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    save_file({PROMPT_KEY: weight}, str(directory / WEIGHTS_FILE))
    (directory / "README.md").write_text(
        "Whole-model prefix (P-tuning v2) adapter in peft's layout. Keys of real tokens take "
        "positions from 0, as in splitfed's split model.\n"
    )
    log.info("saved the whole-model prefix adapter in %s", directory)

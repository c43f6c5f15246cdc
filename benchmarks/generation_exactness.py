"""Split greedy generation vs the whole model's ``generate`` on a real model: token-identical?

The same weights and adapters (LoRA on every part, lora_B drawn at random so the adapters change the
output), single prompts and a left-padded batch, with the trunk's KV cache and without it. The trunk
runs in a server-side ``GenerationCaches`` in this process (the network path is checked token for
token by ``generation_speed.py``). Saves JSON.

    .venv/bin/python benchmarks/generation_exactness.py --model smollm2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from splitfed.inference import LocalGeneration, SamplingSettings, SplitGenerator
from splitfed.models import LoraSpec, Partition, add_adapter, load_model, split_model
from splitfed.server.generation import GenerationCaches

PROMPTS = ["The capital of France is",
           "Write one sentence about the sea, the wind and a small boat that sails at night:",
           "Question: what is two plus three? Answer:"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    output = args.output or Path(f"benchmarks/results/generation_exactness_{args.model}.json")

    model, tokenizer = load_model(args.model)
    model.eval()
    tokenizer.padding_side = "left"
    split = split_model(model, Partition(args.head, args.tail))
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=8, alpha=16))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in split.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    caches = GenerationCaches(split.trunk)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    cases = [[prompt] for prompt in PROMPTS] + [PROMPTS]
    rows = []
    for stream, prompts in enumerate(cases):
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            expected = model.generate(**encoded, max_new_tokens=args.new_tokens, do_sample=False,
                                      eos_token_id=None, pad_token_id=pad)[:, encoded.input_ids.shape[1]:]
        row = {"prompts": len(prompts), "left_padded": len(prompts) > 1,
               "prompt_tokens": encoded.attention_mask.sum(1).tolist()}
        for use_cache in (True, False):
            split_generator = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "bench"),
                                             stream, use_cache)
            tokens = list(split_generator.generate(encoded.input_ids, encoded.attention_mask,
                                                   SamplingSettings(max_new_tokens=args.new_tokens),
                                                   eos_token_id=None, pad_token_id=pad))
            produced = torch.stack(tokens, dim=1)
            key = "cache" if use_cache else "no_cache"
            row[f"{key}_identical"] = bool(torch.equal(produced, expected))
            differ = [i for i in range(produced.shape[1]) if not torch.equal(produced[:, i], expected[:, i])]
            row[f"{key}_first_difference"] = differ[0] if differ else None
        row["text"] = tokenizer.batch_decode(expected, skip_special_tokens=True)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"model": args.model, "partition": [args.head, args.tail], "new_tokens": args.new_tokens,
              "all_identical": all(r["cache_identical"] and r["no_cache_identical"] for r in rows),
              "cases": rows}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"all token-identical: {result['all_identical']} -> {output}")


if __name__ == "__main__":
    main()

"""``splitfed parts`` writes one party's part of a model as a directory it can be shipped alone;
``splitfed plan`` says what each party needs in memory, and where the trunk's blocks go."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from splitfed.cli.app import _fail, app, console


@app.command()
def parts(
    model: Annotated[str, typer.Option(help="The base model: smollm2, a tiny test model, a local Hugging "
                                            "Face directory or a .gguf file.")],
    party: Annotated[Literal["client", "server"], typer.Option(
        help="client: the embedding, head blocks, tail blocks, final norm and LM head; server: the trunk "
             "(two-part layout: the client's head alone; the server's trunk, final norm and LM head).")],
    out: Annotated[Path, typer.Option(help="The directory to write (new or empty).")],
    head: Annotated[int, typer.Option(min=0, help="Blocks the client keeps before the trunk (a server "
                                                  "taking a range of partitions: the smallest head).")] = 2,
    tail: Annotated[int, typer.Option(min=0, help="Blocks the client keeps after the trunk (a server taking "
                                                  "a range: the smallest tail).")] = 2,
    layout: Annotated[Literal["three-part", "two-part"], typer.Option(
        help="three-part: the client keeps head and tail; two-part: the server runs the LM head.")
    ] = "three-part",
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], typer.Option(
        help="dtype of the stored weights (the party's `dtype` setting must match).")] = "float32",
) -> None:
    """Write one party's part of a model: config, tokenizer, only its tensors, and a manifest.

    The manifest names the base model (a digest of its files), the partition and dtype, and every
    tensor's SHA-256, checked as the part loads. Set the party's `model` to the directory: a client
    trains from its part alone, and the server refuses parts of another base at the handshake.
    """
    from splitfed.models import Partition
    from splitfed.models.families import UnsupportedModelError
    from splitfed.models.part_export import export_part
    from splitfed.models.placement import DTYPES
    from splitfed.models.split import PartitionError
    from splitfed.models.weight_files import ModelFileError

    started = time.perf_counter()
    if layout == "two-part":
        tail = 0
    try:
        manifest = export_part(model, party, Partition(head, tail), layout, DTYPES[dtype], out)
    except (ModelFileError, PartitionError, UnsupportedModelError, FileExistsError, ValueError,
            OSError) as error:
        raise _fail(error) from error
    stored = sum(1 for _ in manifest.tensors)
    console.print(f"{out}: the {manifest.describe()}; {stored} tensors, base {manifest.base_id}, in "
                  f"{time.perf_counter() - started:.1f}s")


PartyChoice = Literal["all", "client", "server"]


def _tokenizer_bytes(model: str) -> int:
    """Memory the model's tokenizer takes, measured by loading it here (0 when there is none)."""
    from splitfed.models.sources import tokenizer_of
    from splitfed.observability import resident_bytes

    before = resident_bytes()
    tokenizer = tokenizer_of(model)
    return 0 if tokenizer is None else max(0, resident_bytes() - before)


def _file_dtype(model: str, config: object, dtype: str):
    """The dtype the party reads its weights in: a GGUF file's conversion is made in the party's dtype
    (the built-in SmolLM2's in float32); a directory's is what its config says (float32 if silent)."""
    import torch

    from splitfed.models.placement import DTYPES
    from splitfed.models.sources import DEFAULT_MODEL

    if model == DEFAULT_MODEL:
        return torch.float32
    if model.endswith(".gguf"):
        return DTYPES[dtype]
    stored = getattr(config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _runtime_bytes() -> int:
    """This process's memory once it has imported what a party imports (torch, transformers, peft,
    splitfed's client and server, matplotlib for the curves)."""
    import matplotlib.pyplot  # noqa: F401

    import splitfed.client.process  # noqa: F401
    import splitfed.server.process  # noqa: F401
    from splitfed.observability import resident_bytes

    return resident_bytes()


@app.command()
def plan(
    model: Annotated[str, typer.Option(help="The model: a built-in name, a model or part directory, a .gguf "
                                            "file or a config.json (no weights are read).")],
    party: Annotated[PartyChoice, typer.Option(help="Whose memory to plan: the client's, the server's, or "
                                                    "both.")] = "all",
    devices: Annotated[str, typer.Option(help="Comma-separated devices the trunk is spread over, in "
                                              "order, e.g. cuda:0,cuda:1.")] = "cpu",
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], typer.Option(
        help="dtype of the frozen base weights.")] = "bfloat16",
    head: Annotated[int, typer.Option(min=0, help="Blocks the clients keep before the trunk.")] = 2,
    tail: Annotated[int, typer.Option(min=0, help="Blocks the clients keep after the trunk.")] = 2,
    layout: Annotated[Literal["three-part", "two-part"], typer.Option(
        help="three-part: the client keeps head and tail; two-part: the server runs the LM head.")
    ] = "three-part",
    batch: Annotated[int, typer.Option(min=1, help="Rows per training step (a client's batch_size).")] = 4,
    length: Annotated[int, typer.Option(min=1, help="Tokens per row (the data's max_length).")] = 256,
    clients_per_step: Annotated[int, typer.Option(min=1, help="Client steps the trunk computes at once "
                                                              "(client-batch mode: the clients).")] = 1,
    lora_rank: Annotated[int, typer.Option(min=1, help="LoRA rank of every part's adapter.")] = 8,
    cache_tokens: Annotated[int, typer.Option(min=0, help="KV-cache tokens to hold for generation, over "
                                                          "all streams.")] = 0,
    memory_gib: Annotated[float | None, typer.Option(help="Memory of each trunk device in GiB (default: what "
                                                          "CUDA reports; unchecked on CPU).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the plan as JSON here.")] = None,
) -> None:
    """What each party needs in memory, and where the trunk's blocks go, from the config alone.

    Per party: the runtime (this machine's torch, transformers, peft and splitfed, measured here), its
    weights in --dtype (a client: embedding, head and tail blocks, final norm, LM head; the server: the
    trunk), the LoRA adapters with gradients and AdamW state (fp32), the activations one training step
    of --batch x --length keeps for backward (measured on the meta device), the KV cache and what
    loading holds in flight. Then the trunk's blocks cut into contiguous runs over --devices, each
    device's need against its memory; a placement that does not fit is refused (exit code 1).
    """
    import json

    from splitfed.models import Partition
    from splitfed.models.families import UnsupportedModelError
    from splitfed.models.party_plan import plan_party
    from splitfed.models.placement import DTYPES, PlacementError, format_plan, plan_trunk
    from splitfed.models.sources import ModelNotFoundError, config_of
    from splitfed.models.split import PartitionError

    tail = 0 if layout == "two-part" else tail
    parties = ("client", "server") if party == "all" else (party,)
    try:
        config = config_of(model)
        runtime = _runtime_bytes()
        tokenizer = _tokenizer_bytes(model) if "client" in parties else 0
        partition = Partition(head, tail)
        stored = _file_dtype(model, config, dtype)
        memories = [plan_party(config, name, partition, layout, DTYPES[dtype], batch, length, lora_rank,
                               cache_tokens, clients_per_step, runtime, file_dtype=stored,
                               tokenizer=tokenizer) for name in parties]
        names = [device.strip() for device in devices.split(",") if device.strip()]
        trunk = plan_trunk(config, partition, names, dtype, lora_rank, cache_tokens=cache_tokens,
                           memory_gib=memory_gib)
    except (PlacementError, PartitionError, UnsupportedModelError, ModelNotFoundError, ValueError,
            OSError) as error:
        raise _fail(error) from error
    console.print(f"{model} ({config.model_type}), {dtype}, partition head {head} / tail {tail} ({layout}), "
                  f"a training step of {batch} x {length} tokens:", highlight=False)
    for memory in memories:
        console.print(f"  {memory.describe()}", highlight=False)
    console.print("  (runtime and tokenizer: measured in this process; serving: a constant measured by "
                  "benchmarks/memory.py)", highlight=False)
    for line in format_plan(trunk):
        console.print(line, highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps({**trunk.to_json(), "parties": [m.to_json() for m in memories]},
                                       indent=2))
    if not trunk.fits:
        raise typer.Exit(1)

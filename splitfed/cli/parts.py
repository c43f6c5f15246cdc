"""``splitfed parts``: write one party's part of a model as a directory it can be shipped alone."""

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

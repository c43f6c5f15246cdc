"""The ``splitfed`` command."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from splitfed import __version__

app = typer.Typer(
    name="splitfed",
    help=(
        "Federated split fine-tuning and split inference of LLMs. Each client keeps the embedding, "
        "the first blocks (head), the last blocks and the LM head (tail) with its private data; a "
        "server runs the middle blocks (trunk)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"splitfed {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Federated split fine-tuning and split inference of LLMs."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Model: smollm2, tiny-llama, tiny-qwen2, tiny-gpt2, tiny-glm, "
                                            "a local HF directory or a .gguf file.")] = "smollm2",
    task: Annotated[str, typer.Option(help="Shipped task: rte, cb, copa or boolq.")] = "rte",
    clients: Annotated[int, typer.Option(min=1, help="Number of clients, each with its own shard.")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps of each trainer "
                                                   "(federation in total, and centralized); "
                                                   "rounded up to rounds x clients x k.")] = 36,
    rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds the steps are spread over.")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 4,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate of the LoRA adapters.")] = 1e-3,
    lora_rank: Annotated[int, typer.Option(min=1, help="LoRA rank (alpha = 2 x rank).")] = 8,
    head: Annotated[int | None, typer.Option(min=0, help="Blocks the client keeps before the trunk "
                                                         "[default: 2; 1 on tiny models].")] = None,
    tail: Annotated[int | None, typer.Option(min=0, help="Blocks the client keeps after the trunk "
                                                         "[default: 2; 1 on tiny models].")] = None,
    train_examples: Annotated[int, typer.Option(min=1, help="Training examples shared out among the "
                                                            "clients.")] = 480,
    eval_examples: Annotated[int, typer.Option(min=1, help="Held-out examples scored before/after.")] = 120,
    seed: Annotated[int, typer.Option(help="Seed of data order, shards and adapter init.")] = 0,
    output: Annotated[Path, typer.Option(help="Where results.json, the loss plot and adapters go.")] = Path(
        "runs/demo"),
) -> None:
    """Fine-tune a model with N clients by federated split learning, and the same model centralized
    with the same data, steps and seeds; print loss and accuracy before and after."""
    from splitfed.demo import DemoSettings, run_demo, save_result
    from splitfed.reporting import markdown_table, plot_losses, results_table

    settings = DemoSettings(model=model, task=task, clients=clients, steps=steps, rounds=rounds,
                            batch_size=batch_size, lr=lr, lora_rank=lora_rank, head=head, tail=tail,
                            train_examples=train_examples, eval_examples=eval_examples, seed=seed,
                            output=output)
    try:
        result = run_demo(settings, console)
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    console.print(results_table(result))
    saved = save_result(result, output)
    (output / "results.md").write_text(_markdown_report(result, markdown_table(result)))
    plot = plot_losses(result, output / "losses.png")
    console.print(f"results: {saved}, {output / 'results.md'}; loss curves: {plot}; "
                  f"total {result.total_seconds:.0f}s")
    adapters = output / "adapters"
    console.print(f"adapters: {adapters}/{{head,trunk,tail}}; merge them into one HF model with\n"
                  f"  splitfed export --base {model} --head {adapters}/head --trunk {adapters}/trunk "
                  f"--tail {adapters}/tail --out {output}/merged")


def _markdown_report(result, table: str) -> str:
    return f"# splitfed demo\n\n{table}\nsettings: `{result.settings}`\n"


@app.command()
def models() -> None:
    """List the models and model families splitfed accepts."""
    from splitfed.models import accepted_models, supported_model_types

    console.print(f"accepted: {accepted_models()}")
    console.print(f"supported model types: {', '.join(supported_model_types())}")


@app.command()
def export(
    base: Annotated[str, typer.Option(help="The base model the adapters were trained on.")],
    head: Annotated[Path, typer.Option(help="Directory of the head's adapter.")],
    trunk: Annotated[Path, typer.Option(help="Directory of the trunk's adapter.")],
    tail: Annotated[Path, typer.Option(help="Directory of the tail's adapter.")],
    out: Annotated[Path, typer.Option(help="Output: a plain Hugging Face model directory.")],
) -> None:
    """Merge the head, trunk and tail adapters into one Hugging Face model directory that
    transformers loads without splitfed (prefix adapters are saved beside it in peft's format)."""
    from splitfed.models import AdapterError, export_merged

    started = time.perf_counter()
    try:
        path = export_merged(base, [head, trunk, tail], out)
    except (AdapterError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    console.print(f"merged model written to {path} in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    app()

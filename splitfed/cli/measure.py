"""``splitfed attack``, ``eval``, ``simulate`` and ``status``: commands that measure and observe."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from splitfed.cli.app import ConfigOption, SetOption, _fail, _merge, app, console
from splitfed.cli.options import setting


@app.command()
def attack(
    config: ConfigOption = None,
    set_: SetOption = None,
    model: Annotated[str | None, setting("AttackSettings", "model")] = None,
    head: Annotated[int | None, setting("AttackSettings", "head")] = None,
    tail: Annotated[int | None, setting("AttackSettings", "tail")] = None,
    task: Annotated[str | None, setting("AttackSettings", "task")] = None,
    victims: Annotated[int | None, setting("AttackSettings", "victims")] = None,
    forward_clip: Annotated[str | None, setting("AttackSettings", "forward.clip")] = None,
    forward_sigma: Annotated[float | None, setting("AttackSettings", "forward.sigma")] = None,
    backward_clip: Annotated[str | None, setting("AttackSettings", "backward.clip")] = None,
    backward_sigma: Annotated[float | None, setting("AttackSettings", "backward.sigma")] = None,
    attacks: Annotated[str | None, setting("AttackSettings", "attacks", help=(
        "Comma-separated attacks: nn-cosine, nn-l2, learned, learned-mixed, direct, gradient, labels, and "
        "the defense-aware adaptive, known-plaintext, averaging, generation"))] = None,
    victim_adapters: Annotated[Path | None, setting("AttackSettings", "victim_adapters")] = None,
    inverter_steps: Annotated[int | None, setting("AttackSettings", "inverter.steps")] = None,
    dtype: Annotated[str | None, setting("AttackSettings", "dtype")] = None,
    device: Annotated[str | None, setting("AttackSettings", "device")] = None,
    output: Annotated[Path | None, setting("AttackSettings", "output")] = None,
) -> None:
    """Attack split-learning traffic as an honest-but-curious server; report what it recovers.

    The attacker has what the server sees (the head's output, possibly clipped and noised; its own
    trunk output; the upstream gradient), the public pretrained weights without the victim's
    adapters, and public text (wikitext-2). Attacks: nearest-neighbour inversion against the token
    embeddings (cosine, L2); learned inverters trained on public text at the victim's noise level and
    at mixed levels; direct forward (the public tail run on the trunk output, scored against the next
    private token); a learned inverter of the upstream gradient. Metrics: token accuracy (padding
    excluded), ROUGE-L F1 and the rate of rows recovered exactly.

    The defense-aware attacks know the victim's `privacy:` block (give it with --config or
    --set privacy.learned.kind=bottleneck ...): adaptive (the attacker runs the same defense with its
    own seed on public text and trains on that), known-plaintext (then fine-tunes on the template's
    tokens in the victim's own traffic), averaging (K transmissions of a row averaged) and generation
    (what inference sends). They are scored on the rows' private positions only.
    """
    from splitfed.attacks.harness import AttackSettings
    from splitfed.attacks.run import attack_table, run_attack, save_attack
    from splitfed.config import ConfigError, build_settings

    def clip(value: str | None) -> float | str | None:
        return value if value in (None, "median") else float(value)

    overrides = {"model": model, "head": head, "tail": tail, "task": task, "victims": victims,
                 "forward.sigma": forward_sigma, "backward.sigma": backward_sigma,
                 "attacks": attacks.split(",") if attacks else None, "victim_adapters": victim_adapters,
                 "inverter.steps": inverter_steps, "dtype": dtype, "device": device, "output": output}
    try:
        overrides["forward.clip"] = clip(forward_clip)
        overrides["backward.clip"] = clip(backward_clip)
        settings = build_settings(AttackSettings, config, _merge(set_, overrides))
        result = run_attack(settings, console)
    except (ConfigError, ValueError, OSError) as error:
        raise _fail(error) from error
    console.print(attack_table(result))
    console.print(f"results: {save_attack(result, settings.output)} ({result['seconds']:.0f}s)")


@app.command()
def status(
    output: Annotated[Path, typer.Argument(help="The server's output folder (where it writes status.json).")
                      ] = Path("runs/server"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status as JSON.")] = False,
) -> None:
    """Show what a trunk server is doing: connected clients, mode, steps, rounds and progress per client."""
    import json

    from rich.table import Table

    from splitfed.observability import read_status

    try:
        state = read_status(output)
    except (OSError, ValueError) as error:
        raise _fail(error) from error
    if as_json:
        console.print_json(json.dumps(state))
        return
    age = time.time() - state.get("updated", 0)
    running = "stopped" if state.get("stopped") else ("running" if age < 10 else f"silent for {age:.0f}s")
    rounds = state["secure_rounds"] or state["plain_rounds"]
    console.print(f"[bold]{state.get('model', '?')}[/bold] trunk on port {state.get('port', '?')}: "
                  f"{running}; "
                  f"mode {state['mode']} ({state['sub_servers']} sub-server(s)), {state['aggregation']} "
                  f"aggregation; {state['steps']} trunk steps; {rounds} FedAvg round(s); generation: "
                  f"{state['generation_streams']} stream(s), {state['generation_cache_mib']:.1f} MiB")
    table = Table("client", "connected", "steps done")
    for name in sorted(set(state["progress"]) | set(state["sessions"])):
        table.add_row(name, "yes" if name in state["sessions"] else "no", str(state["progress"].get(name, 0)))
    console.print(table)


@app.command("eval")
def eval_(
    config: ConfigOption = None,
    set_: SetOption = None,
    model: Annotated[str | None, setting("EvalSettings", "model")] = None,
    task: Annotated[list[str] | None, setting("EvalSettings", "tasks", help=(
        "Shipped task (repeatable): rte, cb, copa, boolq, wic, wsc, multirc, xsum, coqa. Your own data: "
        "describe it under `tasks:` in --config."), default="cb")] = None,
    method: Annotated[list[str] | None, setting("EvalSettings", "methods", help=(
        "Methods to run (repeatable): zero-shot, centralized, split, federated-iid, federated-noniid, "
        "federated-noise (the default rows); federated-network (processes over TLS), federated-ray "
        "(see simulate)."), default="the default rows")] = None,
    clients: Annotated[int | None, setting("EvalSettings", "clients")] = None,
    steps: Annotated[int | None, setting("EvalSettings", "steps", help="Optimizer steps of every trainer; a "
                                         "multiple of rounds x clients.")] = None,
    rounds: Annotated[int | None, setting("EvalSettings", "rounds")] = None,
    batch_size: Annotated[int | None, setting("EvalSettings", "batch_size")] = None,
    lr: Annotated[float | None, setting("EvalSettings", "lr")] = None,
    train_examples: Annotated[int | None, setting("EvalSettings", "train_examples")] = None,
    eval_examples: Annotated[int | None, setting("EvalSettings", "eval_examples")] = None,
    select_examples: Annotated[str | None, setting("EvalSettings", "select_examples")] = None,
    max_new_tokens: Annotated[int | None, setting("EvalSettings", "max_new_tokens")] = None,
    seed: Annotated[int | None, setting("EvalSettings", "seed")] = None,
    dtype: Annotated[str | None, setting("EvalSettings", "dtype")] = None,
    device: Annotated[str | None, setting("EvalSettings", "device")] = None,
    output: Annotated[Path | None, setting("EvalSettings", "output")] = None,
) -> None:
    """Zero-shot, centralized, split (1 client) and federated (N clients, IID / non-IID / + noise)
    fine-tuning on the same tasks with the same seeds, steps and hyper-parameters.

    Classification tasks are scored by the log-likelihood of each answer option; generation tasks
    (XSum: ROUGE-1/2/L, CoQA: SQuAD F1) by greedy decoding through the split model. Writes a table
    shaped like the papers' main table (results.md), results.json and the loss curves (losses.png).
    """
    overrides = {"model": model, "tasks": task or None, "methods": method or None, "clients": clients,
                 "steps": steps, "rounds": rounds, "batch_size": batch_size, "lr": lr,
                 "train_examples": train_examples, "eval_examples": eval_examples,
                 "select_examples": select_examples, "max_new_tokens": max_new_tokens, "seed": seed,
                 "dtype": dtype, "device": device, "output": output}
    _run_and_report(config, _merge(set_, overrides))


def _run_and_report(config: Path | None, overrides: dict) -> None:
    """Build ``EvalSettings``, run them, and write results.json, results.md and losses.png."""
    from splitfed.config import ConfigError, build_settings
    from splitfed.evaluation import EvalSettings, markdown_report, plot_losses, run_eval, save_result
    from splitfed.server.ray_backend import RayBackendError

    try:
        settings = build_settings(EvalSettings, config, overrides)
        result = run_eval(settings, console)
    except (ConfigError, ValueError, OSError, ImportError, RayBackendError) as error:
        raise _fail(error) from error
    saved = save_result(result, settings.output)
    report = markdown_report(result)
    (settings.output / "results.md").write_text(report)
    plot = plot_losses(result, settings.output / "losses.png")
    console.print(report)
    console.print(f"results: {saved}, {settings.output / 'results.md'}; loss curves: {plot}; "
                  f"total {result.total_seconds:.0f}s")


@app.command()
def simulate(
    config: ConfigOption = None,
    set_: SetOption = None,
    clients: Annotated[int, typer.Option(min=1, help="Simulated clients (each with its own shard, head "
                                                     "and tail adapters).")] = 10,
    backend: Annotated[str, typer.Option(help="ray: clients and trunks as Ray actors; inprocess: the same "
                                              "rounds in this process (federated-iid).")] = "ray",
    sub_servers: Annotated[int | None, setting("EvalSettings", "simulation.sub_servers")] = None,
    hosts: Annotated[int | None, setting("EvalSettings", "simulation.hosts")] = None,
    ray_address: Annotated[str | None, setting("EvalSettings", "simulation.ray_address")] = None,
    model: Annotated[str | None, setting("EvalSettings", "model", help="The model (tiny-llama for a quick "
                                         "run; `splitfed models` lists them)")] = None,
    task: Annotated[str, typer.Option(help="Shipped task: rte, cb, copa, boolq, wic, wsc, multirc, xsum, "
                                           "coqa.")] = "cb",
    rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds.")] = 1,
    local_steps: Annotated[int, typer.Option(min=1, help="Steps per client per round.")] = 1,
    batch_size: Annotated[int | None, setting("EvalSettings", "batch_size")] = None,
    lr: Annotated[float | None, setting("EvalSettings", "lr")] = None,
    train_examples: Annotated[int | None, setting("EvalSettings", "train_examples")] = None,
    eval_examples: Annotated[int | None, setting("EvalSettings", "eval_examples")] = None,
    seed: Annotated[int | None, setting("EvalSettings", "seed")] = None,
    output: Annotated[Path | None, setting("EvalSettings", "output", default="runs/simulate")] = None,
) -> None:
    """A federation of many clients on one machine or a Ray cluster, for research at scale: the data
    splits, rounds and FedAvg of the in-process federation, with the clients (in groups, one frozen
    base per actor) and the trunk(s) as Ray actors. Scored on the task's held-out examples like
    `splitfed eval` (this is its federated-ray row). Needs `pip install 'splitfed\\[ray]'`."""
    if backend not in ("ray", "inprocess"):
        raise _fail(ValueError(f"--backend {backend!r}: choose ray or inprocess"))
    overrides = {"model": model, "tasks": [task], "clients": clients, "rounds": rounds,
                 "steps": rounds * clients * local_steps, "batch_size": batch_size, "lr": lr,
                 "train_examples": train_examples, "eval_examples": eval_examples, "seed": seed,
                 "methods": ["federated-ray" if backend == "ray" else "federated-iid"],
                 "output": output or Path("runs/simulate"), "simulation.sub_servers": sub_servers,
                 "simulation.hosts": hosts, "simulation.ray_address": ray_address}
    _run_and_report(config, _merge(set_, overrides))

"""The commands that run splitfed: the demo, the server, a client's training and generation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from splitfed.cli.app import INTERRUPTED_EXIT, ConfigOption, SetOption, _fail, _merge, app, console
from splitfed.cli.options import setting


@app.command()
def demo(
    model: Annotated[str | None, setting("DemoSettings", "model")] = None,
    task: Annotated[str | None, setting("DemoSettings", "task")] = None,
    clients: Annotated[int | None, setting("DemoSettings", "clients")] = None,
    steps: Annotated[int | None, setting("DemoSettings", "steps")] = None,
    rounds: Annotated[int | None, setting("DemoSettings", "rounds")] = None,
    batch_size: Annotated[int | None, setting("DemoSettings", "batch_size")] = None,
    lr: Annotated[float | None, setting("DemoSettings", "lr")] = None,
    lora_rank: Annotated[int | None, setting("DemoSettings", "lora_rank")] = None,
    head: Annotated[int | None, setting("DemoSettings", "head")] = None,
    tail: Annotated[int | None, setting("DemoSettings", "tail")] = None,
    train_examples: Annotated[int | None, setting("DemoSettings", "train_examples")] = None,
    eval_examples: Annotated[int | None, setting("DemoSettings", "eval_examples")] = None,
    seed: Annotated[int | None, setting("DemoSettings", "seed")] = None,
    in_process: Annotated[bool | None, setting("DemoSettings", "in_process", "--in-process")] = None,
    defense: Annotated[str | None, setting("DemoSettings", "defense")] = None,
    dtype: Annotated[str | None, setting("DemoSettings", "dtype")] = None,
    device: Annotated[str | None, setting("DemoSettings", "device")] = None,
    output: Annotated[Path | None, setting("DemoSettings", "output")] = None,
) -> None:
    """Federated split fine-tuning vs centralized, on a real task: loss and accuracy before and after.

    Fine-tunes a model with N clients by federated split learning (a `splitfed serve` process and one
    `splitfed train` process per client over TLS on 127.0.0.1, or in this process with --in-process),
    and the same model centralized with the same data, steps and seeds. It is a preset of
    `splitfed eval` (methods zero-shot, federated-network or federated-iid, centralized).
    """
    from splitfed.demo import DemoSettings, run_demo
    from splitfed.demo_privacy import DEFENSES
    from splitfed.evaluation import save_result
    from splitfed.evaluation.report import detail_markdown, detail_table, plot_losses

    if defense is not None and defense not in DEFENSES:
        console.print(f"[red]error:[/] --defense {defense!r}: choose one of {', '.join(DEFENSES)}")
        raise typer.Exit(2)
    from pydantic import ValidationError

    from splitfed.config import describe_validation_error
    from splitfed.federation.processes import FederationFailed

    given = {"model": model, "task": task, "clients": clients, "steps": steps, "rounds": rounds,
             "batch_size": batch_size, "lr": lr, "lora_rank": lora_rank, "head": head, "tail": tail,
             "train_examples": train_examples, "eval_examples": eval_examples, "seed": seed,
             "in_process": in_process, "defense": defense, "dtype": dtype, "device": device, "output": output}
    try:
        settings = DemoSettings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as error:
        console.print(f"[red]error:[/] {describe_validation_error(error)}")
        raise typer.Exit(2) from error
    task, output, model = settings.task, settings.output, settings.model

    try:
        result = run_demo(settings, console)
    except (ValueError, FederationFailed) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    console.print(detail_table(result, task))
    saved = save_result(result, output)
    (output / "results.md").write_text(f"# splitfed demo\n\n{detail_markdown(result, task)}\n"
                                       f"settings: `{result.settings}`\n")
    plot = plot_losses(result, output / "losses.png")
    console.print(f"results: {saved}, {output / 'results.md'}; loss curves: {plot}; "
                  f"total {result.total_seconds:.0f}s")
    adapters = output / "adapters"
    console.print(f"adapters: {adapters}/{{head,trunk,tail}}; merge them into one HF model with\n"
                  f"  splitfed export --base {model} --head {adapters}/head --trunk {adapters}/trunk "
                  f"--tail {adapters}/tail --out {output}/merged")


@app.command()
def serve(
    config: ConfigOption = None,
    set_: SetOption = None,
    listen: Annotated[str | None, setting("ServerSettings", "listen")] = None,
    model: Annotated[str | None, setting("ServerSettings", "model")] = None,
    head: Annotated[int | None, setting("ServerSettings", "partition.head")] = None,
    tail: Annotated[int | None, setting("ServerSettings", "partition.tail")] = None,
    layout: Annotated[str | None, setting("ServerSettings", "partition.layout")] = None,
    identity: Annotated[Path | None, setting("ServerSettings", "identity")] = None,
    allowlist: Annotated[Path | None, setting("ServerSettings", "allowlist")] = None,
    tls_cert: Annotated[Path | None, setting("ServerSettings", "tls_cert")] = None,
    tls_key: Annotated[Path | None, setting("ServerSettings", "tls_key")] = None,
    insecure_loopback: Annotated[bool | None, setting("ServerSettings", "insecure_loopback",
                                                      "--insecure-loopback")] = None,
    roster: Annotated[str | None, setting("ServerSettings", "roster", help=(
        "Comma-separated client names served round-robin in this order (reproducible runs)"))] = None,
    mode: Annotated[str | None, setting("ServerSettings", "mode")] = None,
    backend: Annotated[str | None, setting("ServerSettings", "backend")] = None,
    ray_address: Annotated[str | None, setting("ServerSettings", "ray.address")] = None,
    exit_when_done: Annotated[bool | None, setting("ServerSettings", "exit_when_done",
                                                   "--exit-when-done")] = None,
    lr: Annotated[float | None, setting("ServerSettings", "optimizer.lr", help="AdamW learning rate of the "
                                        "trunk adapter")] = None,
    seed: Annotated[int | None, setting("ServerSettings", "seed", help="Seed of the trunk adapter's "
                                        "initialisation")] = None,
    port_file: Annotated[Path | None, setting("ServerSettings", "port_file")] = None,
    output: Annotated[Path | None, setting("ServerSettings", "output")] = None,
    resume: Annotated[bool | None, setting("ServerSettings", "resume", "--resume")] = None,
    checkpoint_every: Annotated[int | None, setting("ServerSettings", "checkpoint_every")] = None,
    seal_key_file: Annotated[Path | None, setting("ServerSettings", "sealing.key_file", help=(
        "Seal checkpoints and the saved trunk adapter with the key in this file (from `splitfed "
        "sealing-key`)"))] = None,
    seal_key_env: Annotated[str | None, setting("ServerSettings", "sealing.key_env", help=(
        "Seal with the key (hex or base64) in this environment variable"), default="unset")] = None,
    seal_key_command: Annotated[str | None, setting("ServerSettings", "sealing.key_command", help=(
        "Seal with the key printed by this command (e.g. a KMS client; split on spaces)"))] = None,
) -> None:
    """Run the trunk server for enrolled clients over authenticated, encrypted sessions.

    The server holds the middle blocks of the model (frozen) and a trainable trunk adapter, serves
    until stopped (Ctrl-C, SIGTERM or --exit-when-done) and then saves the adapter.
    """
    from splitfed.checkpoint import CheckpointError
    from splitfed.config import ConfigError, build_settings
    from splitfed.security import SecurityError
    from splitfed.server.process import run_server
    from splitfed.server.ray_backend import RayBackendError
    from splitfed.server.settings import ServerSettings

    overrides = {"listen": listen, "model": model, "partition.head": head, "partition.tail": tail,
                 "partition.layout": layout, "identity": identity, "allowlist": allowlist,
                 "tls_cert": tls_cert, "tls_key": tls_key,
                 "insecure_loopback": insecure_loopback, "exit_when_done": exit_when_done,
                 "roster": roster.split(",") if roster else None, "optimizer.lr": lr, "seed": seed,
                 "mode": mode, "backend": backend, "ray.address": ray_address,
                 "port_file": port_file, "output": output, "resume": resume,
                 "checkpoint_every": checkpoint_every, **_sealing_overrides(seal_key_file, seal_key_env,
                                                                            seal_key_command)}
    try:
        settings = build_settings(ServerSettings, config, _merge(set_, overrides))
        run_server(settings)
    except (ConfigError, ValueError, OSError, SecurityError, CheckpointError, RayBackendError) as error:
        raise _fail(error) from error


def _sealing_overrides(key_file: Path | None, key_env: str | None, key_command: str | None) -> dict:
    given = [name for name, value in (("file", key_file), ("env", key_env), ("command", key_command))
             if value]
    if len(given) > 1:
        raise _fail(ValueError("give at most one of --seal-key-file, --seal-key-env, --seal-key-command"))
    if not given:
        return {}
    return {"sealing.key_provider": given[0], "sealing.key_file": key_file, "sealing.key_env": key_env,
            "sealing.key_command": key_command.split() if key_command else None}


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    name: Annotated[str | None, setting("ClientSettings", "name")] = None,
    identity: Annotated[Path | None, setting("ClientSettings", "identity")] = None,
    server: Annotated[str | None, setting("ClientSettings", "server")] = None,
    server_key: Annotated[Path | None, setting("ClientSettings", "server_key")] = None,
    server_cert: Annotated[Path | None, setting("ClientSettings", "server_cert")] = None,
    insecure_loopback: Annotated[bool | None, setting("ClientSettings", "insecure_loopback",
                                                      "--insecure-loopback")] = None,
    model: Annotated[str | None, setting("ClientSettings", "model")] = None,
    head: Annotated[int | None, setting("ClientSettings", "partition.head")] = None,
    tail: Annotated[int | None, setting("ClientSettings", "partition.tail")] = None,
    layout: Annotated[str | None, setting("ClientSettings", "partition.layout")] = None,
    task: Annotated[str | None, setting("ClientSettings", "data.task")] = None,
    data_file: Annotated[Path | None, setting("ClientSettings", "data.file")] = None,
    shard: Annotated[int | None, setting("ClientSettings", "data.shard")] = None,
    shards: Annotated[int | None, setting("ClientSettings", "data.shards")] = None,
    steps: Annotated[int | None, setting("ClientSettings", "steps")] = None,
    batch_size: Annotated[int | None, setting("ClientSettings", "batch_size")] = None,
    lr: Annotated[float | None, setting("ClientSettings", "optimizer.lr", help="AdamW learning rate of the "
                                        "head and tail adapters")] = None,
    wire_dtype: Annotated[str | None, setting("ClientSettings", "wire_dtype")] = None,
    seed: Annotated[int | None, setting("ClientSettings", "seed", help="Seed of the adapters' "
                                        "initialisation and of the data order")] = None,
    output: Annotated[Path | None, setting("ClientSettings", "output")] = None,
    resume: Annotated[bool | None, setting("ClientSettings", "resume", "--resume")] = None,
    checkpoint_every: Annotated[int | None, setting("ClientSettings", "checkpoint_every")] = None,
) -> None:
    """Run a client: head and tail train on private data here, the trunk runs on the server.

    Only hidden states and gradients leave this machine, encrypted (AES-256-GCM); tokens, labels
    and logits stay here. The head and tail adapters are saved at the end.
    """
    from splitfed.client.process import run_client
    from splitfed.client.remote_trunk import TrunkMismatchError
    from splitfed.client.settings import ClientSettings
    from splitfed.config import ConfigError, build_settings
    from splitfed.privacy import format_epsilon
    from splitfed.security import SecurityError
    from splitfed.transport.errors import RemoteError

    overrides = {"name": name, "identity": identity, "server": server, "server_key": server_key,
                 "server_cert": server_cert, "insecure_loopback": insecure_loopback, "model": model,
                 "partition.head": head, "partition.tail": tail, "partition.layout": layout,
                 "data.task": task, "data.file": data_file,
                 "data.shard": shard, "data.shards": shards, "steps": steps, "batch_size": batch_size,
                 "optimizer.lr": lr, "wire_dtype": wire_dtype, "seed": seed, "data.seed": seed,
                 "output": output, "resume": resume, "checkpoint_every": checkpoint_every}
    try:
        settings = build_settings(ClientSettings, config, _merge(set_, overrides))
        summary = run_client(settings, console)
    except (ConfigError, ValueError, OSError, RemoteError, SecurityError, TrunkMismatchError) as error:
        raise _fail(error) from error
    if summary["interrupted"]:
        console.print(f"{summary['name']}: interrupted after {summary['steps']} steps; checkpoint saved "
                      "(run again with --resume)")
        raise typer.Exit(INTERRUPTED_EXIT)
    spent = "" if summary["privacy"] is None else f", privacy spent {format_epsilon(summary['privacy'])}"
    stopped = "" if summary["stopped"] is None else f"; stopped early: {summary['stopped']}"
    console.print(f"{summary['name']}: {summary['steps']} steps, loss {summary['losses'][0]:.3f} -> "
                  f"{summary['losses'][-1]:.3f}, {summary['tokens_per_second']:.0f} tokens/s, "
                  f"{summary['bytes_sent'] / 1e6:.1f} MB sent{spent}{stopped}")


@app.command()
def generate(
    config: ConfigOption = None,
    set_: SetOption = None,
    prompt: Annotated[str | None, typer.Option(help="The prompt (omit with --chat).", show_default="unset")
                      ] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Interactive chat: the KV caches on every part are "
                                       "kept between turns. Ctrl-D or /exit ends it.")] = False,
    system: Annotated[str | None, typer.Option(help="Chat: a system message.", show_default="none")] = None,
    max_new_tokens: Annotated[int | None, setting("ClientSettings", "sampling.max_new_tokens")] = None,
    temperature: Annotated[float | None, setting("ClientSettings", "sampling.temperature")] = None,
    top_k: Annotated[int | None, setting("ClientSettings", "sampling.top_k")] = None,
    top_p: Annotated[float | None, setting("ClientSettings", "sampling.top_p")] = None,
    repetition_penalty: Annotated[float | None, setting("ClientSettings", "sampling.repetition_penalty")
                                  ] = None,
    stop: Annotated[list[str] | None, setting("ClientSettings", "sampling.stop", help=(
        "Stop at this text (repeatable)"))] = None,
    seed: Annotated[int | None, setting("ClientSettings", "sampling.seed")] = None,
    lookup: Annotated[int | None, setting("ClientSettings", "sampling.lookup_tokens", help=(
        "Greedy only: send up to N draft tokens looked up in the context with each step, checked here, "
        "so one round trip can bring several tokens; the output is the same. Pays over slow links. "
        "0 = off"))] = None,
    no_chat_template: Annotated[bool, typer.Option("--no-chat-template", help="Send the prompt as plain "
                                                   "text, not through the model's chat template.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute the whole sequence through "
                                           "every part at each step (slow; for comparison).")] = False,
    server: Annotated[str | None, setting("ClientSettings", "server")] = None,
    output: Annotated[Path | None, setting("ClientSettings", "output", help=(
        "Where training saved the head and tail adapters"))] = None,
) -> None:
    """Generate text with the split model: the prompt, the sampling and the answer stay here.

    Uses the client config of `splitfed train` (identity, server, model, partition) and the head and
    tail adapters training saved in its output folder; the server serves its trunk adapter
    (`trunk_adapter` in its config). The prompt's hidden states go up once, then one token's hidden
    state per step; tokens are printed as they come.
    """
    from splitfed.client.generation import open_generator
    from splitfed.client.settings import ClientSettings
    from splitfed.config import ConfigError, build_settings
    from splitfed.inference import ChatSession, stream_text
    from splitfed.security import SecurityError
    from splitfed.transport.errors import RemoteError

    if (prompt is None) == (not chat):
        raise _fail(ValueError("give --prompt TEXT, or --chat for an interactive conversation"))
    overrides = {"server": server, "output": output, "sampling.max_new_tokens": max_new_tokens,
                 "sampling.temperature": temperature, "sampling.top_k": top_k, "sampling.top_p": top_p,
                 "sampling.repetition_penalty": repetition_penalty, "sampling.stop": stop,
                 "sampling.seed": seed, "sampling.lookup_tokens": lookup,
                 "chat_template": False if no_chat_template else None}
    try:
        settings = build_settings(ClientSettings, config, _merge(set_, overrides))
        session = open_generator(settings, use_cache=not no_cache)
    except (ConfigError, ValueError, OSError, RemoteError, SecurityError) as error:
        raise _fail(error) from error
    out = Console(highlight=False)
    try:
        if prompt is not None:
            started = time.perf_counter()
            sent = session.remote.connection.bytes_sent
            for piece in stream_text(session.generator, session.tokenizer, prompt, settings.sampling,
                                     settings.chat_template):
                out.print(piece, end="", markup=False)
            out.print()
            seconds = time.perf_counter() - started
            fed = session.generator.past_length
            counts = session.generator.lookup
            drafts = f", {counts.accepted}/{counts.drafted} draft tokens accepted" if counts.steps else ""
            console.log(f"{fed} tokens in context, {seconds:.1f}s, "
                        f"{(session.remote.connection.bytes_sent - sent) / 1e3:.0f} kB sent{drafts}")
            return
        conversation = ChatSession(session.generator, session.tokenizer, settings.sampling, system)
        while True:
            try:
                text = out.input("[bold]you>[/bold] ")
            except EOFError:
                break
            if text.strip() in ("/exit", "/quit"):
                break
            if not text.strip():
                continue
            out.print("[bold]model>[/bold] ", end="")
            for piece in conversation.say(text):
                out.print(piece, end="", markup=False)
            out.print()
    except (RemoteError, ValueError) as error:
        raise _fail(error) from error
    finally:
        session.close()

"""The commands that run splitfed: the demo, the server, a client's training and generation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from splitfed.cli.app import INTERRUPTED_EXIT, ConfigOption, SetOption, _fail, _merge, app, console


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Model: smollm2, a tiny test model (tiny-llama, tiny-gemma3, "
                                            "...: `splitfed models` lists them), a local HF directory or "
                                            "a .gguf file.")] = "smollm2",
    task: Annotated[str, typer.Option(help="Shipped task: cb, rte, copa or boolq.")] = "cb",
    clients: Annotated[int, typer.Option(min=1, help="Number of clients, each with its own shard.")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps of each trainer "
                                                   "(federation in total, and centralized); "
                                                   "rounded up to rounds x clients x k.")] = 36,
    rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds the steps are spread over.")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 4,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate of the LoRA adapters.")] = 1e-3,
    lora_rank: Annotated[int, typer.Option(min=1, help="LoRA rank (alpha = 2 x rank).")] = 8,
    head: Annotated[int | None, typer.Option(min=0, help="Blocks the client keeps before the trunk "
                                                         "(default: 2; 1 on tiny models).")] = None,
    tail: Annotated[int | None, typer.Option(min=0, help="Blocks the client keeps after the trunk "
                                                         "(default: 2; 1 on tiny models).")] = None,
    train_examples: Annotated[int, typer.Option(min=1, help="Training examples shared out among the "
                                                            "clients.")] = 480,
    eval_examples: Annotated[int, typer.Option(min=1, help="Held-out examples scored before/after.")] = 120,
    seed: Annotated[int, typer.Option(help="Seed of data order, shards and adapter init.")] = 0,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run the federation in this process, "
                                             "not as server and client processes over TLS.")] = False,
    defense: Annotated[str, typer.Option(help="Train with a privacy defense: none, noise (clip + "
                                              "Gaussian noise), bottleneck (learned information "
                                              "bottleneck + local bypass) or dcor (distance correlation "
                                              "+ bypass); then attack the run's own traffic and report "
                                              "what the server could read with and without it.")] = "none",
    dtype: Annotated[str, typer.Option(help="Frozen base weights in float32, bfloat16 or float16 "
                                            "(adapters stay float32).")] = "float32",
    device: Annotated[str, typer.Option(help="auto (CUDA when present, else CPU), cpu, cuda or "
                                             "cuda:N.")] = "auto",
    output: Annotated[Path, typer.Option(help="Where results.json, the loss plot and adapters go.")] = Path(
        "runs/demo"),
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

    if defense not in DEFENSES:
        console.print(f"[red]error:[/] --defense {defense!r}: choose one of {', '.join(DEFENSES)}")
        raise typer.Exit(2)
    from pydantic import ValidationError

    from splitfed.config import describe_validation_error
    from splitfed.federation.processes import FederationFailed

    try:
        settings = DemoSettings(model=model, task=task, clients=clients, steps=steps, rounds=rounds,
                                batch_size=batch_size, lr=lr, lora_rank=lora_rank, head=head, tail=tail,
                                train_examples=train_examples, eval_examples=eval_examples, seed=seed,
                                in_process=in_process, defense=defense, dtype=dtype, device=device,
                                output=output)
    except ValidationError as error:
        console.print(f"[red]error:[/] {describe_validation_error(error)}")
        raise typer.Exit(2) from error

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
    listen: Annotated[str | None, typer.Option(help="host:port to listen on (127.0.0.1:50051).")] = None,
    model: Annotated[str | None, typer.Option(help="Base model (default: smollm2).")] = None,
    head: Annotated[int | None, typer.Option(min=0, help="Blocks the clients keep before the trunk.")] = None,
    tail: Annotated[int | None, typer.Option(min=0, help="Blocks the clients keep after the trunk.")] = None,
    layout: Annotated[str | None, typer.Option(help="three-part (clients keep head and tail; default) or "
                                                    "two-part (clients keep the head only; this server "
                                                    "runs the LM head and receives their labels).")] = None,
    identity: Annotated[Path | None, typer.Option(help="The server's private key file.")] = None,
    allowlist: Annotated[Path | None, typer.Option(help="File of client public keys or directory of "
                                                        ".pub files.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (needed beyond loopback).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key.")] = None,
    insecure_loopback: Annotated[bool | None, typer.Option("--insecure-loopback", help="Allow plaintext "
                                 "transport, on a loopback address only (payloads stay encrypted).")] = None,
    roster: Annotated[str | None, typer.Option(help="Comma-separated client names served round-robin in "
                                                    "this order (reproducible runs).")] = None,
    mode: Annotated[str | None, typer.Option(help="sequential (one client step at a time), client-batch "
                                                  "(one step per batch of client forwards) or hierarchical "
                                                  "(--set sub_servers=K --set average_every=R), or auto "
                                                  "(chosen from capacity; the reason is logged).")] = None,
    backend: Annotated[str | None, typer.Option(help="Hierarchical mode: threads (sub-servers in this "
                                                     "process over one frozen base; default) or ray (each "
                                                     "sub-server a Ray actor with its own base and "
                                                     "resources; --set ray.num_gpus=0.5).")] = None,
    ray_address: Annotated[str | None, typer.Option(help="With --backend ray: the Ray cluster to join "
                                                         "(auto, or host:port); unset: a local Ray "
                                                         "instance.")] = None,
    exit_when_done: Annotated[bool | None, typer.Option("--exit-when-done", help="Stop once every roster "
                                                        "client has closed its session.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate of the trunk adapter.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the trunk adapter's initialisation.")] = None,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here.")] = None,
    output: Annotated[Path | None, typer.Option(help="Where the trunk adapter is saved on exit.")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue from the newest intact "
                                                "checkpoint in output/checkpoints.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=0, help="Checkpoint every N trunk steps "
                                                         "(always on SIGTERM/SIGINT).")] = None,
    seal_key_file: Annotated[Path | None, typer.Option(help="Seal checkpoints and the saved trunk adapter "
                                                            "with the key in this file (from `splitfed "
                                                            "sealing-key`).")] = None,
    seal_key_env: Annotated[str | None, typer.Option(help="Seal with the key (hex/base64) in this "
                                                          "environment variable.")] = None,
    seal_key_command: Annotated[str | None, typer.Option(help="Seal with the key printed by this command "
                                                              "(e.g. a KMS client; split on spaces).")
                                ] = None,
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
    name: Annotated[str | None, typer.Option(help="This client's name (as enrolled on the server).")] = None,
    identity: Annotated[Path | None, typer.Option(help="This client's private key file.")] = None,
    server: Annotated[str | None, typer.Option(help="host:port of the trunk server.")] = None,
    server_key: Annotated[Path | None, typer.Option(help="The server's public identity, pinned.")] = None,
    server_cert: Annotated[Path | None, typer.Option(help="The server's TLS certificate, pinned.")] = None,
    insecure_loopback: Annotated[bool | None, typer.Option("--insecure-loopback", help="Allow plaintext "
                                 "transport to a loopback address (payloads stay encrypted).")] = None,
    model: Annotated[str | None, typer.Option(help="Base model, the server's (default: smollm2).")] = None,
    head: Annotated[int | None, typer.Option(min=0, help="Blocks kept before the trunk.")] = None,
    tail: Annotated[int | None, typer.Option(min=0, help="Blocks kept after the trunk.")] = None,
    layout: Annotated[str | None, typer.Option(help="three-part (head and tail here; default) or two-part "
                                                    "(head only here; the labels go to the server).")] = None,
    task: Annotated[str | None, typer.Option(help="Shipped task, or the template of --data-file.")] = None,
    data_file: Annotated[Path | None, typer.Option(help="Your own JSONL training file.")] = None,
    shard: Annotated[int | None, typer.Option(min=0, help="Which data shard this client holds.")] = None,
    shards: Annotated[int | None, typer.Option(min=1, help="Into how many shards the data is split.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Examples per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate of the head/tail adapters.")] = None,
    wire_dtype: Annotated[str | None, typer.Option(help="float32, bfloat16, float16 or int8-blockwise on the "
                                                        "wire, both ways (each: --set wire.forward=...)."
                                                   )] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of adapter init and data order.")] = None,
    output: Annotated[Path | None, typer.Option(help="Where the head and tail adapters are saved.")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue from the newest intact "
                                                "checkpoint (output/checkpoints).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=0, help="Also checkpoint every N steps "
                                                         "(always at round ends and on SIGTERM/SIGINT).")
                                ] = None,
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
    prompt: Annotated[str | None, typer.Option(help="The prompt (omit with --chat).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Interactive chat: the KV caches on every part are "
                                       "kept between turns. Ctrl-D or /exit ends it.")] = False,
    system: Annotated[str | None, typer.Option(help="Chat: a system message.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens to generate at most.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="0 = greedy (default).")] = None,
    top_k: Annotated[int | None, typer.Option(min=0, help="Sample among the k most likely (0 = off).")
                     ] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Nucleus mass (1 = off).")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(min=0.0, help="1 = off.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop at this text (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler.")] = None,
    lookup: Annotated[int | None, typer.Option(min=0, max=64, help="Greedy only: send up to N draft tokens "
                                               "looked up in the context with each step, checked here, so "
                                               "one round trip can bring several tokens; the output is "
                                               "the same. Pays over slow links. 0 = off (default).")
                      ] = None,
    no_chat_template: Annotated[bool, typer.Option("--no-chat-template", help="Send the prompt as plain "
                                                   "text, not through the model's chat template.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute the whole sequence through "
                                           "every part at each step (slow; for comparison).")] = False,
    server: Annotated[str | None, typer.Option(help="host:port of the trunk server.")] = None,
    output: Annotated[Path | None, typer.Option(help="Where training saved the head and tail adapters.")
                      ] = None,
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

"""The commands that set a deployment up: identities, the sealing key, the model list, the
configuration reference and the export of a merged model (``parts`` and ``plan`` are in ``parts.py``)."""


from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from splitfed.cli.app import _fail, app, console


@app.command()
def keygen(
    name: Annotated[str, typer.Argument(help="Identity name: the client's name in the server's allow-list, "
                                             "or the server's name.")],
    out: Annotated[Path, typer.Option(help="Directory to write the key files into.")] = Path("keys"),
    server: Annotated[bool, typer.Option("--server", help="Also write a self-signed TLS certificate and key "
                                                          "for the trunk server.")] = False,
    host: Annotated[list[str] | None, typer.Option(help="Server DNS name for the TLS certificate "
                                                        "(repeatable).")] = None,
    ip: Annotated[list[str] | None, typer.Option(help="Server IP address for the TLS certificate "
                                                      "(repeatable).")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Client: also write a TLS certificate for "
                                                   "mutual TLS (NAME-tls-cert.pem, -key.pem).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Create an identity (and, with --server, a TLS certificate) for a client or the server.

    Writes NAME.key (Ed25519, private, mode 0600) and NAME.pub (public). Put the clients' .pub files
    in the server's allow-list; give the server's .pub and TLS certificate to every client.
    """
    from splitfed.security import (
        SecurityError,
        create_client_tls_files,
        create_identity_files,
        create_server_files,
    )

    try:
        if server:
            files = create_server_files(out, host or ["localhost"], ip or ["127.0.0.1"], name=name,
                                        overwrite=overwrite)
            console.print(f"server identity: {files.identity_key} (private), {files.identity_pub}\n"
                          f"TLS: {files.tls_cert}, {files.tls_key} (private)\n"
                          f"identity fingerprint {files.identity_fingerprint}\n"
                          f"TLS fingerprint      {files.tls_fingerprint}")
        else:
            key, pub = create_identity_files(out, name, overwrite=overwrite)
            console.print(f"identity: {key} (private, keep it here), {pub} (public: enrol it on the server)")
            if tls:
                cert, tls_key = create_client_tls_files(out, name, overwrite=overwrite)
                console.print(f"mutual TLS: {cert} (give it to the server's tls_client_certs), "
                              f"{tls_key} (private)")
    except (SecurityError, OSError, ValueError) as error:
        raise _fail(error) from error


@app.command("sealing-key")
def sealing_key(
    out: Annotated[Path, typer.Argument(help="The key file to create (mode 0600).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key file (sealed checkpoints "
                                                 "made with the old key will no longer load).")] = False,
) -> None:
    """Create a random 32-byte sealing key for the server's trusted slice.

    Give it to `splitfed serve --seal-key-file FILE` (or keep it in a KMS and use
    sealing.key_provider=command); checkpoints and the saved trunk adapter are then sealed with AEAD.
    """
    from splitfed.security import SecurityError, create_key_file

    try:
        path = create_key_file(out, overwrite=overwrite)
    except (OSError, SecurityError) as error:
        raise _fail(error) from error
    console.print(f"sealing key: {path} (private, mode 0600; losing it makes the sealed checkpoints "
                  "unreadable)")


@app.command()
def export(
    base: Annotated[str, typer.Option(help="The base model the adapters were trained on.")],
    head: Annotated[Path, typer.Option(help="Directory of the head's adapter.")],
    trunk: Annotated[Path, typer.Option(help="Directory of the trunk's adapter.")],
    tail: Annotated[Path, typer.Option(help="Directory of the tail's adapter.")],
    out: Annotated[Path, typer.Option(help="Output: a plain Hugging Face model directory.")],
) -> None:
    """Merge the head, trunk and tail adapters into one plain Hugging Face model directory.

    transformers loads the result without splitfed; prefix adapters cannot be folded into weights
    and are saved beside it as one whole-model adapter in peft's format.
    """
    from splitfed.models import AdapterError, export_merged

    started = time.perf_counter()
    try:
        path = export_merged(base, [head, trunk, tail], out)
    except (AdapterError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    console.print(f"merged model written to {path} in {time.perf_counter() - started:.1f}s")


@app.command()
def models() -> None:
    """List the models and model families splitfed accepts."""
    from splitfed.models import accepted_models, supported_model_types

    console.print(f"accepted: {accepted_models()}")
    console.print(f"supported model types: {', '.join(supported_model_types())}")


@app.command("config-reference")
def config_reference(
    output: Annotated[Path | None, typer.Option(help="Write the Markdown here, not to the terminal.")] = None,
) -> None:
    """Every config field of serve, train/generate and eval: type, default and description (Markdown).

    Generated from the typed settings, so it is always the version you run; the docs site shows the
    same page.
    """
    from splitfed.settings_reference import config_reference as reference

    text = reference()
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text)
        console.print(f"config reference: {output}")

"""`forgather tls`: a per-host CA and server certificate for HTTPS (`forgather serve --tls-cert`)."""

from __future__ import annotations

from typing import Annotated

import typer

tls_app = typer.Typer(
    name="tls",
    help="Certificates for serving over HTTPS.",
    no_args_is_help=True,
)


@tls_app.command("init")
def init(
    directory: Annotated[
        str | None,
        typer.Option("--dir", help="Where the files go (default: ~/.config/forgather/tls)."),
    ] = None,
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            help="Another DNS name or IP address clients use for this host (repeatable).",
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Days the server certificate is valid.")] = 825,
    force: Annotated[
        bool,
        typer.Option("--force", help="Make a new CA too (clients must then trust the new ca.crt)."),
    ] = False,
) -> None:
    """Make this host's CA (once) and a server certificate for its names and addresses.

    Run it again to renew the server certificate (or to add --name): the CA is kept, so clients
    that trust ca.crt keep working.
    """
    from forgather.tls import init_tls

    files, names, made_ca = init_tls(directory, name, force=force, days=days)
    ca = files.ca_cert
    typer.echo(f"CA certificate ({'new' if made_ca else 'kept'}; give it to clients): {ca}")
    typer.echo(f"server certificate: {files.server_cert}")
    typer.echo(f"server key:         {files.server_key}")
    typer.echo(f"valid for: {', '.join(names)}")
    typer.echo("")
    typer.echo(
        "serve:    forgather serve MODEL --host 0.0.0.0 "
        f"--tls-cert {files.server_cert} --tls-key {files.server_key}"
    )
    typer.echo(f"curl:     curl --cacert {ca} https://HOST:8000/v1/models")
    typer.echo(f"python:   export SSL_CERT_FILE={ca}   # openai, httpx and requests clients")


def register(app: typer.Typer) -> None:
    app.add_typer(tls_app, name="tls")

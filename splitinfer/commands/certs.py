"""`splitinfer certs`: a development CA, server and client certificates for TLS and mutual TLS."""

from __future__ import annotations

from pathlib import Path

import typer

from splitinfer.cli import _user_errors, app, console


@app.command()
def certs(
    out_dir: Path = typer.Argument(..., help="directory to write ca.pem, server.pem/.key, client.pem/.key into"),
    hosts: str = typer.Option("localhost,127.0.0.1", help="comma-separated DNS names and IPs clients dial the server by"),
    client_id: str = typer.Option("edge", help="common name of the client certificate"),
    days: int = typer.Option(365, help="validity of every certificate"),
    force: bool = typer.Option(False, help="overwrite existing files"),
) -> None:
    """Write a development CA and the certificates it signs (needs the cryptography package)."""
    with _user_errors():
        from cloud_runtime.certs import write_dev_certs

        paths = write_dev_certs(out_dir, hosts=hosts.split(","), client_id=client_id, days=days, overwrite=force)
        console.print(f"wrote {', '.join(p.name for p in vars(paths).values())} to {out_dir}", highlight=False)
        console.print(
            f"server: splitinfer serve BUNDLE --tls-cert {paths.server_cert} --tls-key {paths.server_key} "
            f"[--tls-client-ca {paths.ca}]\n"
            f"device: splitinfer run BUNDLE --server HOST:PORT --tls-ca {paths.ca} "
            f"[--tls-cert {paths.client_cert} --tls-key {paths.client_key}] --input ...",
            highlight=False,
            soft_wrap=True,
        )

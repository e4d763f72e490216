"""`splitinfer certs`: a development CA, server and client certificates for TLS and mutual TLS;
`splitinfer signing-key` and `splitinfer sign`: Ed25519 keys for signed bundles, and signing."""

from __future__ import annotations

from pathlib import Path

import typer

from splitinfer.console import console, user_errors
from splitinfer.options import at_least

commands = typer.Typer()


@commands.command()
def certs(
    out_dir: Path = typer.Argument(
        ..., metavar="DIR", help="directory to write ca.pem, server.pem/.key, client.pem/.key into"
    ),
    hosts: str = typer.Option(
        "localhost,127.0.0.1", help="comma-separated DNS names and IPs clients dial the server by"
    ),
    client_id: str = typer.Option("edge", help="common name of the client certificate"),
    days: int = typer.Option(365, callback=at_least(1), help="validity of every certificate"),
    force: bool = typer.Option(False, "--force", help="overwrite existing files"),
) -> None:
    """Write a development CA and the certificates it signs (needs the cryptography package)."""
    with user_errors():
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


@commands.command("signing-key")
def signing_key(
    out_dir: Path = typer.Argument(..., metavar="DIR", help="directory to write NAME.key (private) and NAME.pub into"),
    name: str = typer.Option("bundle-signing", help="file name of the key pair, without extension"),
    force: bool = typer.Option(False, "--force", help="overwrite existing files"),
) -> None:
    """Write an Ed25519 key pair for signing bundles (needs the cryptography package)."""
    with user_errors():
        from protos.signing import load_signing_key, write_key_pair

        key_path, pub_path = write_key_pair(out_dir, name, overwrite=force)
        console.print(
            f"wrote {key_path} (keep it private) and {pub_path}, key id {load_signing_key(key_path).key_id}",
            highlight=False,
        )
        console.print(
            f"sign: splitinfer export ... --sign-key {key_path}   or   splitinfer sign BUNDLE --key {key_path}\n"
            f"serve signed bundles only: splitinfer serve BUNDLE --trust-key {pub_path}",
            highlight=False,
            soft_wrap=True,
        )


@commands.command()
def sign(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="bundle directory to sign (as exported)"),
    key: Path = typer.Option(..., help="Ed25519 private key (PEM, `splitinfer signing-key`)"),
) -> None:
    """Sign a bundle: write BUNDLE/manifest.sig over its manifest, which pins every model file."""
    with user_errors():
        from protos.signing import load_signing_key, sign_bundle

        signer = load_signing_key(key)
        console.print(f"signed {bundle} with key {signer.key_id} → {sign_bundle(bundle, signer)}", highlight=False)

"""`pylon keyd`: run the key daemon (registered as a subcommand of `pylon`)."""

from __future__ import annotations

import logging
import pathlib

import click


def _key_spec(value: str) -> tuple[str, pathlib.Path]:
    key_id, sep, path = value.partition("=")
    if not sep or not key_id or not path:
        raise click.BadParameter(f"expected ID=KEYFILE, got {value!r}")
    return key_id, pathlib.Path(path)


@click.command("keyd")
@click.option("--listen", required=True, metavar="unix:PATH", help="Unix socket to serve on.")
@click.option("--key", "keys", multiple=True, metavar="ID=KEYFILE",
              help="A PEM private key served under ID (repeatable; without any, keyd serves the keys agents ask it "
                   "to make).")
@click.option("--allow-uid", "allow_uids", multiple=True, type=int, metavar="UID",
              help="A uid allowed to connect (repeatable; default: keyd's own uid).")
@click.option("--no-cryptomb", is_flag=True, help="Compute with OpenSSL even where crypto_mb could run.")
@click.option("--poll-delay", type=click.FloatRange(min=0.0001, max=1.0), default=0.01, show_default=True,
              metavar="SECONDS", help="Longest wait of a partial crypto_mb batch (cryptomb's poll_delay).")
def keyd_command(listen: str, keys: tuple[str, ...], allow_uids: tuple[int, ...], no_cryptomb: bool,
                 poll_delay: float) -> None:
    """Hold private keys and sign TLS handshakes for pylon proxies (provider `keyd`)."""
    import uvloop

    from pylon.keys.keyd.server import load_keys, run_keyd

    if not listen.startswith("unix:") or len(listen) <= 5:
        raise click.BadParameter("expected unix:PATH", param_hint="--listen")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    specs = []
    for value in keys:
        key_id, path = _key_spec(value)
        try:
            specs.append((key_id, path.read_bytes()))
        except OSError as exc:
            raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="--key") from None
    loaded = load_keys(specs, use_cryptomb=not no_cryptomb)
    try:
        ready = lambda: click.echo("keyd ready", err=True)  # noqa: E731
        uvloop.run(run_keyd(listen[5:], loaded, allow_uids, poll_delay, ready=ready, use_cryptomb=not no_cryptomb))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    keyd_command()

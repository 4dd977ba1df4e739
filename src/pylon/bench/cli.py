"""Click commands `echo`, `load` and `report`, added to the `pylon` group by `pylon.cli`.

`load` hands its raw arguments to the Fortio-style parser (`fortio_args`), so
`-qps 100 -c 8 -H 'Host: x'` work exactly as they do with Fortio. Usage errors
exit with code 2 and a one-line reason, like Fortio and like click.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from pylon.bench.echo import DEFAULT_BODY_SIZE, DEFAULT_PORT, EchoConfig, serve_echo
from pylon.bench.fortio_args import LoadOptions, LoadUsageError, parse_load_args
from pylon.bench.load import FortioResult, run_load, start_banner
from pylon.bench.report import write_report
from pylon.bench.results import load_result, summary_text, write_json


@click.command("echo")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="port to listen on (0 = any free)")
@click.option("--host", default="0.0.0.0", show_default=True, help="address to listen on")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="serve TLS with this certificate")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="private key of --tls-cert")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
              help="require client certificates signed by this CA (mTLS)")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="worker processes sharing the port (SO_REUSEPORT)")
@click.option("--body-size", type=click.IntRange(min=0), default=DEFAULT_BODY_SIZE, show_default=True,
              help="size of the default response body")
@click.option("--grpc-port", "-grpc-port", "grpc_port", type=click.IntRange(min=0), default=None,
              help="serve Fortio's gRPC ping and health services on this port too (0 = any free)")
def echo(port: int, host: str, tls_cert: str | None, tls_key: str | None, tls_ca: str | None, concurrency: int,
         body_size: int, grpc_port: int | None) -> None:
    """Echo server (Fortio's server role), HTTP/1.1 and HTTP/2 (h2c prior knowledge, ALPN h2 with TLS):
    GET /stats for counters; Fortio query args shape replies."""
    if tls_key and not tls_cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    if tls_ca and not tls_cert:
        raise click.UsageError("--tls-ca needs --tls-cert")
    config = EchoConfig(port=port, host=host, tls_cert=tls_cert or "", tls_key=tls_key or "", tls_ca=tls_ca or "",
                        concurrency=concurrency, body_size=body_size, grpc_port=grpc_port)
    scheme = "https" if tls_cert else "http"

    def ready(bound: int, grpc_bound: int | None) -> None:
        click.echo(f"pylon echo listening on {scheme}://{host}:{bound} ({concurrency} worker(s))")
        if grpc_bound is not None:
            click.echo(f"pylon echo serving gRPC ping and health on {host}:{grpc_bound}")
        sys.stdout.flush()

    try:
        serve_echo(config, on_ready=ready)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None


class _ProgressBar:
    """A rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, options: LoadOptions) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.by_count = options.exactly > 0
        self.total = options.exactly if self.by_count else (options.duration or None)
        self.started = time.monotonic()
        self.progress = Progress(TextColumn("[bold]pylon load"), BarColumn(), TextColumn("{task.fields[calls]} calls"),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                                 auto_refresh=False)
        self.task = self.progress.add_task("load", total=self.total, calls=0)

    def __enter__(self) -> "_ProgressBar":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, calls: int) -> None:
        done = calls if self.by_count else time.monotonic() - self.started
        self.progress.update(self.task, completed=done, calls=calls)
        self.progress.refresh()


def _run(options: LoadOptions) -> FortioResult:
    if sys.stderr.isatty():
        with _ProgressBar(options) as bar:
            return run_load(options, progress=bar)
    return run_load(options)


@click.command("load", add_help_option=False,
               context_settings=dict(ignore_unknown_options=True, allow_extra_args=True, help_option_names=[]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def load(args: tuple[str, ...]) -> None:
    """Fortio-compatible load generator: pylon load [-qps N] [-c N] [-t D] [-n N] ... URL (-h for all flags)."""
    try:
        options = parse_load_args(args)
    except LoadUsageError as exc:
        click.echo(f"pylon load: error: {exc}\nusage: pylon load [flags] URL   (pylon load -h for the flags)", err=True)
        sys.exit(2)
    to_stdout = options.json_path == "-"
    out = sys.stderr if to_stdout else sys.stdout
    print(start_banner(options), file=out, flush=True)
    try:
        result = _run(options)
    except LoadUsageError as exc:
        click.echo(f"pylon load: error: {exc}", err=True)
        sys.exit(2)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    print(summary_text(result), file=out, end="", flush=True)
    if to_stdout:
        import json

        print(json.dumps(result, indent=2))
    elif options.json_path:
        print(f"Successfully wrote {write_json(result, options.json_path)}", file=out)
    if options.auto_save:
        path = Path(options.data_dir) / f"{result['ID']}.json"
        print(f"Successfully wrote {write_json(result, path)}", file=out)
    if options.csv_path:
        write_report([result], csv=options.csv_path)
        print(f"Successfully wrote {options.csv_path}", file=out)


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="write Istio-style CSV here")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="write comparison charts here")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="write an HTML page (table + charts) here")
def report(runs: tuple[str, ...], csv_path: str | None, png_path: str | None, html_path: str | None) -> None:
    """Compare load runs (Fortio JSON): a table, and optionally CSV, PNG and HTML."""
    try:
        results = [load_result(path) for path in runs]
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    write_report(results, csv=csv_path, png=png_path, html=html_path, print_table=True)
    for path in (csv_path, png_path, html_path):
        if path:
            click.echo(f"wrote {path}")


@click.group()
def _standalone() -> None:
    """The bench commands on their own (`python -m pylon.bench.cli`)."""


_standalone.add_command(echo)
_standalone.add_command(load)
_standalone.add_command(report)

if __name__ == "__main__":
    _standalone()

"""Envoy config conformance: which Envoy bootstrap configs `pylon proxy` accepts, beside Envoy 1.40's own verdict.

Issue 17's figure. Given directories (or files) of configs collected from Envoy's published examples and docs,
it finds the Envoy bootstraps among them (YAML/JSON whose top level has `static_resources`, `dynamic_resources`,
`admin`, `node` or `layered_runtime`; docker-compose files, Kubernetes manifests, xDS responses and anything else
are skipped and counted by reason) and validates each twice, from the file's own directory (configs name files
relative to it), each run with a timeout and in a network namespace of its own (`unshare --net`: Envoy's validate
mode binds and connects nothing but still sends DNS queries for its DNS clusters' hosts):

  envoy --mode validate -c FILE
  python -m pylon.cli proxy --mode validate -c FILE    (this worktree's pylon)

Reported per config: Envoy accepted?, pylon accepted?, pylon's first error line (its field path). Totals: Envoy's
acceptance rate; pylon's acceptance rate among the configs Envoy accepts (the issue's goal: >= 80%); the configs
that need files missing here (certificates, runtime directories made inside the examples' docker images), counted
apart when Envoy fails the same way; and pylon's refusal reasons (by extension @type, or by field under the
nearest typed extension) ranked by how many Envoy-accepted configs each blocks. For the configs both accept, the
md also says which could be served on loopback as they are (no upstream named by DNS, no privileged port).

Usage: python benchmarks/conformance.py PATH [PATH ...] [--name conformance] [--source TEXT] [--timeout 60]
       [--jobs 2]
Writes benchmarks/results/NAME.{json,md} (or --out DIR). At most --jobs (2) validations run at a time; each is
its own process group, killed by its id if it outlives --timeout.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP_KEYS = ("static_resources", "dynamic_resources", "admin", "node", "layered_runtime")
SUFFIXES = (".yaml", ".yml", ".json")
IGNORED_DIRS = {".git", "node_modules", "__pycache__"}
GOAL = 0.80
# What Envoy and pylon say when a config names a file that is not on this machine (certificates, runtime layers,
# xDS files the examples' docker images provide).
MISSING_FILE = re.compile(r"No such file or directory|does not exist|Invalid path|cannot read|unable to add "
                          r"filesystem watch|unable to open file|Failed to load", re.IGNORECASE)
NOT_IN_BUILD = re.compile(r"could not find @type '(?:type\.googleapis\.com/)?([^']+)'|Didn't find a registered "
                          r"implementation for(?: type| name)?:? '([^']+)'")
UNKNOWN_TYPE = re.compile(r"unknown ([\w\- ]+?) type (?:type\.googleapis\.com/)?(\S+?);?(?:\s|$)")
PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


@dataclass
class Outcome:
    """One validator's verdict on one config."""

    accepted: bool
    error: str = ""          # the first error line, "" when accepted
    missing_files: bool = False
    timed_out: bool = False
    seconds: float = 0.0


@dataclass
class ConfigResult:
    """Both verdicts on one config, and where it falls in the report."""

    path: str
    envoy: Outcome
    pylon: Outcome
    category: str = ""
    reason: str = ""         # pylon's refusal reason (the ranking key), "" when pylon accepts
    envoy_reason: str = ""   # why Envoy refuses, "" when it accepts
    serve_note: str = ""     # for configs both accept: could they serve on loopback as they are


@dataclass
class Survey:
    """Everything one run found: the configs validated and the files skipped."""

    results: list[ConfigResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason


# --------------------------------------------------------------------------- finding the bootstraps


def candidate_files(paths: Iterable[Path]) -> Iterator[Path]:
    """YAML/JSON files under the given paths, in a stable order (files given by name are always candidates)."""
    for path in paths:
        if path.is_file():
            yield path
            continue
        for found in sorted(path.rglob("*")):
            if found.suffix in SUFFIXES and found.is_file() and not IGNORED_DIRS & set(found.parts):
                yield found


class EnvoyYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with Envoy's one YAML extension: mapping keys tagged `!ignore` are left out, with
    their values (Envoy's docs use them to hold anchors the config refers to; plain PyYAML refuses the tag)."""


def _mapping_without_ignored(loader: EnvoyYamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    node.value = [(key, value) for key, value in node.value if key.tag != "!ignore"]
    return loader.construct_mapping(node, deep=True)


EnvoyYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_ignored)


def load_documents(path: Path) -> list[Any]:
    """The YAML documents in a file, read as Envoy reads YAML."""
    return list(yaml.load_all(path.read_text(errors="replace"), Loader=EnvoyYamlLoader))  # noqa: S506 - safe


def skip_reason(path: Path) -> str:
    """Why a file is not an Envoy bootstrap, or "" when it is one; the reasons are counted in the report."""
    try:
        docs = [doc for doc in load_documents(path) if doc is not None]
    except yaml.YAMLError:
        return "not parseable as YAML/JSON (a template?)"
    if any(isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc for doc in docs):
        return "Kubernetes manifest"
    if len(docs) != 1:
        return "empty" if not docs else "several YAML documents (not a bootstrap)"
    top = docs[0]
    if not isinstance(top, dict):
        return "top level is not a mapping"
    if any(key in top for key in BOOTSTRAP_KEYS):
        return ""
    if "services" in top:
        return "docker-compose file"
    if "resources" in top:
        return "xDS DiscoveryResponse (a file other configs load)"
    return "no bootstrap top-level key (other JSON/YAML)"


# --------------------------------------------------------------------------- running the validators


@dataclass
class Run:
    """A finished (or killed) validator process."""

    returncode: int
    output: str  # stderr, then stdout
    seconds: float
    timed_out: bool = False


def run_validator(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run one validator in its own process group; a run past `timeout` is killed (its group, by id)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Run(-signal.SIGKILL, "", time.monotonic() - started, timed_out=True)
    return Run(proc.returncode, err + out, time.monotonic() - started)


def outcome(run: Run, error_line: Callable[[str], str], timeout: float) -> Outcome:
    """A validator's verdict from its run: accepted on exit 0, else its first error line."""
    if run.timed_out:
        return Outcome(False, f"timed out after {timeout:g}s", timed_out=True, seconds=run.seconds)
    if run.returncode == 0:
        return Outcome(True, seconds=run.seconds)
    error = error_line(run.output)
    return Outcome(False, error, missing_files=bool(MISSING_FILE.search(error)), seconds=run.seconds)


def network_isolation() -> list[str]:
    """A command prefix that runs a validator in a network namespace of its own (loopback only, down).

    Envoy's validate mode binds and connects nothing, but it still sends DNS queries for its STRICT_DNS and
    LOGICAL_DNS hosts, and the examples name docker services and internet hosts; in the namespace the queries
    fail at once (ENETUNREACH) and the verdict is the same."""
    for prefix in (["unshare", "--net"], ["unshare", "--user", "--map-root-user", "--net"]):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    raise RuntimeError("cannot make a network namespace (unshare --net, as root or with user namespaces): "
                       "refusing to let Envoy resolve the configs' host names")


def envoy_outcome(envoy: str, config: Path, timeout: float, isolation: Sequence[str] = ()) -> Outcome:
    """Envoy's validate mode on one config (no hot restart: concurrent runs must not share its memory)."""
    run = run_validator([*isolation, envoy, "--mode", "validate", "-c", config.name, "--log-level", "error",
                         "--disable-hot-restart"], config.parent, timeout)
    return outcome(run, envoy_error_line, timeout)


def envoy_error_line(text: str) -> str:
    """The message of Envoy's 'error initializing configuration' line, without its JSON dump of the whole
    config (else its last non-empty line)."""
    for line in text.splitlines():
        found = re.search(r"error initializing configuration '[^']*': (.*)", line)
        if found:
            return re.sub(r"\): \{.*", ")", found.group(1))[:400]
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:400] if lines else "refused without a message"


def pylon_outcome(config: Path, timeout: float, isolation: Sequence[str] = ()) -> Outcome:
    """`pylon proxy --mode validate` on one config, from this worktree's source (not whatever pylon the
    interpreter has installed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                       os.environ.get("PYTHONPATH")]))}
    run = run_validator([*isolation, sys.executable, "-m", "pylon.cli", "proxy", "--mode", "validate",
                         "-c", config.name, "--log-level", "error"], config.parent, timeout, env)
    return outcome(run, pylon_error_line, timeout)


def pylon_error_line(text: str) -> str:
    """pylon's one 'config error in FILE: field.path: message' line; a traceback's last line if it crashed."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("config error in "):
            return line[len("config error in "):]
    return f"crashed: {lines[-1]}" if lines else "refused without a message"


# --------------------------------------------------------------------------- classifying


def path_tokens(field_path: str) -> list[tuple[str, bool]]:
    """`a.b[0].c[envoy.x]` -> [('a', False), ('b', False), ('0', True), ('c', False), ('envoy.x', True)]:
    each step and whether it was bracketed (a list index or a map key, which keep their dots)."""
    return [(name or key, not name) for name, key in PATH_TOKEN.findall(field_path)]


def short_type(type_url: str) -> str:
    """`type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`
    -> `HttpConnectionManager`: enough to name the extension a field belongs to."""
    return type_url.rsplit(".", 1)[-1].rsplit("/", 1)[-1]


def field_reason(document: Any, field_path: str) -> str:
    """A field path as a ranking key: relative to the nearest typed extension on the way (found by walking the
    config), list indices and map keys shown as [], so the same gap counts once per config wherever it sits."""
    node, base, rest = document, "", []
    for token, bracketed in path_tokens(field_path):
        if isinstance(node, dict) and "@type" in node:
            base, rest = short_type(str(node["@type"])), []
        if bracketed:
            rest[-1:] = [rest[-1] + "[]"] if rest else []
        else:
            rest.append(token)
        node = step(node, token)
    return ".".join(([base] if base else []) + rest)


def step(node: Any, token: str) -> Any:
    """One step down a config by a path token (None once the path leaves the document)."""
    if isinstance(node, list) and token.isdigit():
        return node[int(token)] if int(token) < len(node) else None
    return node.get(token) if isinstance(node, dict) else None


def refusal_reason(error: str, document: Any) -> str:
    """pylon's error as a ranking key: the extension's @type when it is an unknown one, else the field."""
    unknown = UNKNOWN_TYPE.search(error)
    if unknown:
        return f"{unknown.group(2)} (unknown {unknown.group(1)} type)"
    if error.startswith(("crashed:", "timed out")):
        return error.split(":", 1)[0]
    parts = error.split(": ")
    if len(parts) < 3:  # "FILE: message": no field path (a file it could not read)
        return parts[-1]
    message = parts[2].split(";")[0]
    return f"{field_reason(document, parts[1])}: {message}"


def envoy_refusal(error: str) -> str:
    """Why Envoy refuses: a file its docker image would have, an extension not in this build, or its message."""
    if MISSING_FILE.search(error):
        return "needs files missing here"
    not_built = NOT_IN_BUILD.search(error)
    if not_built:
        return f"extension not in this Envoy build (contrib?): {not_built.group(1) or not_built.group(2)}"
    return error


def categorize(result: ConfigResult, document: Any) -> None:
    """Put one config in the report's categories; only 'envoy-only' counts against pylon's acceptance goal."""
    envoy, pylon = result.envoy, result.pylon
    if not envoy.accepted:
        result.envoy_reason = envoy_refusal(envoy.error)
    if not pylon.accepted:
        result.reason = refusal_reason(pylon.error, document)
    if envoy.accepted:
        result.category = "both" if pylon.accepted else "envoy-only"
    elif envoy.missing_files and pylon.missing_files:
        result.category = "missing-files"
    else:
        result.category = "pylon-only" if pylon.accepted else "neither"
    if result.category == "both":
        result.serve_note = serve_note(document)


def serve_note(document: Any) -> str:
    """Whether an accepted config could serve on loopback as it is: "" if so, else what stands in the way
    (upstreams named by DNS would be resolved, ports below 1024 need root)."""
    static = document.get("static_resources") or {}
    names, low_ports = set(), set()
    for cluster in static.get("clusters") or []:
        for address in socket_addresses(cluster.get("load_assignment") or {}):
            host = str(address.get("address", ""))
            try:
                ipaddress.ip_address(host)
            except ValueError:
                names.add(host)
    for listener in static.get("listeners") or []:
        for address in socket_addresses(listener.get("address") or {}):
            if 0 < int(address.get("port_value") or 0) < 1024:
                low_ports.add(int(address["port_value"]))
    notes = []
    services = sorted(name for name in names if "." not in name)
    if services:
        notes.append("upstreams by docker-compose service name: " + ", ".join(services))
    if names - set(services):
        notes.append("upstreams by DNS name: " + ", ".join(sorted(names - set(services))))
    if low_ports:
        notes.append("ports below 1024: " + ", ".join(map(str, sorted(low_ports))))
    if document.get("dynamic_resources"):
        notes.append("dynamic resources from a control plane or files")
    return "; ".join(notes)


def socket_addresses(node: Any) -> Iterator[dict[str, Any]]:
    """Every `socket_address` mapping under a part of a config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "socket_address" and isinstance(value, dict):
                yield value
            else:
                yield from socket_addresses(value)
    elif isinstance(node, list):
        for item in node:
            yield from socket_addresses(item)


# --------------------------------------------------------------------------- the survey


def survey(paths: Iterable[Path], envoy: str, timeout: float = 60.0, jobs: int = 2,
           isolation: Sequence[str] = ()) -> Survey:
    """Find the bootstraps under `paths` and validate each with Envoy and pylon, at most `jobs` processes at once,
    each run behind the `isolation` command prefix (see `network_isolation`)."""
    paths = [Path(p).resolve() for p in paths]
    found = Survey()
    configs = []
    for path in candidate_files(paths):
        reason = skip_reason(path)
        if reason:
            found.skipped[display(path, paths)] = reason
        else:
            configs.append(path)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        envoys = [pool.submit(envoy_outcome, envoy, config, timeout, isolation) for config in configs]
        pylons = [pool.submit(pylon_outcome, config, timeout, isolation) for config in configs]
        for config, envoy_run, pylon_run in zip(configs, envoys, pylons):
            result = ConfigResult(display(config, paths), envoy_run.result(), pylon_run.result())
            categorize(result, next(doc for doc in load_documents(config) if doc is not None))
            found.results.append(result)
    return found


def display(path: Path, roots: list[Path]) -> str:
    """A path relative to the root it was found under, as the report names it."""
    for root in roots:
        if path == root:
            return path.name
        if root in path.parents:
            return str(path.relative_to(root))
    return str(path)


def totals(found: Survey) -> dict[str, Any]:
    """The headline figures and the ranking of pylon's refusal reasons over the configs Envoy accepts."""
    categories = Counter(result.category for result in found.results)
    envoy_accepted = categories["both"] + categories["envoy-only"]
    blocking = Counter(result.reason for result in found.results if result.category == "envoy-only")
    return {
        "configs": len(found.results),
        "skipped": len(found.skipped),
        "skipped_by_reason": dict(Counter(found.skipped.values()).most_common()),
        "categories": dict(categories),
        "envoy_accepted": envoy_accepted,
        "envoy_acceptance": envoy_accepted / len(found.results) if found.results else 0.0,
        "pylon_accepted_of_envoy_accepted": categories["both"],
        "pylon_acceptance_among_envoy_accepted": categories["both"] / envoy_accepted if envoy_accepted else 0.0,
        "goal": GOAL,
        "refusals_ranked": dict(blocking.most_common()),
    }


# --------------------------------------------------------------------------- the report


def cell(text: str, limit: int = 160) -> str:
    """Table-safe text: pipes escaped, long messages cut."""
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def markdown(found: Survey, summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The md report: headline, ranking, Envoy's own refusals, serveability, then every config."""
    ok = summary["pylon_acceptance_among_envoy_accepted"] >= GOAL
    lines = [
        "# Envoy config conformance: pylon vs Envoy validate",
        "",
        f"Configs: {meta['source']}. Run {meta['when']} on {meta['machine']}; Envoy {meta['envoy']}, pylon "
        f"{meta['pylon']}. `envoy --mode validate` and `pylon proxy --mode validate`, each from the config's "
        f"directory, timeout {meta['timeout']:g} s, each in a network namespace of its own (Envoy's validate mode "
        "still sends DNS queries for its DNS clusters' hosts). Made by `python benchmarks/conformance.py`.",
        "",
        f"- Envoy bootstraps found: **{summary['configs']}** ({summary['skipped']} other YAML/JSON files skipped: "
        + ", ".join(f"{n} {reason}" for reason, n in summary["skipped_by_reason"].items()) + ")",
        f"- Envoy accepts **{summary['envoy_accepted']} / {summary['configs']}** "
        f"({summary['envoy_acceptance']:.0%})",
        f"- pylon accepts **{summary['pylon_accepted_of_envoy_accepted']} / {summary['envoy_accepted']}** of those "
        f"(**{summary['pylon_acceptance_among_envoy_accepted']:.0%}**; goal ≥ {GOAL:.0%}: "
        f"{'met' if ok else 'not met'})",
        f"- Needs files missing here (both refuse for a file the examples' docker images provide): "
        f"{summary['categories'].get('missing-files', 0)}; Envoy refuses for another reason: "
        f"{summary['categories'].get('neither', 0) + summary['categories'].get('pylon-only', 0)} "
        f"(pylon accepts {summary['categories'].get('pylon-only', 0)} of them)",
        "",
        "## pylon's refusal reasons, by Envoy-accepted configs blocked",
        "",
        "pylon stops at a config's first error, so each config counts once, under its first reason; a config may "
        "hold further gaps behind it.",
        "",
        "| configs | reason (extension @type, or field under the nearest typed extension: message) |",
        "|---:|---|",
        *(f"| {n} | {cell(reason, 200)} |" for reason, n in summary["refusals_ranked"].items()),
        "",
        "## Configs Envoy itself refuses",
        "",
        "\"needs files missing here\": certificates, secrets, runtime directories or xDS files that the example "
        "makes inside its docker image or with its scripts, at paths (often under /etc/ or /var/lib/) that are not "
        "on this machine. \"extension not in this Envoy build\": contrib extensions, which ship only in Envoy's "
        "contrib images (envoyproxy/envoy-contrib), not in the standard build measured here. Neither counts in "
        "pylon's figure.",
        "",
        "| config | why Envoy refuses | Envoy's message | pylon accepts? | pylon's first error |",
        "|---|---|---|---|---|",
        *(f"| {r.path} | {cell(r.envoy_reason, 120)} | {cell(r.envoy.error, 140)} | {yes(r.pylon.accepted)} | "
          f"{cell(r.pylon.error, 140)} |" for r in found.results if not r.envoy.accepted),
        "",
        "## Configs both accept: could they serve on loopback as they are?",
        "",
        "As they are: every upstream an IP address, no listener port below 1024, no control plane. Upstreams "
        "named by docker-compose service names would serve once those names resolve to loopback (e.g. "
        "in a network namespace with its own /etc/hosts) and the services run there.",
        "",
        "| config | on loopback as is? | what stands in the way |",
        "|---|---|---|",
        *(f"| {r.path} | {yes(not r.serve_note)} | {cell(r.serve_note) or '-'} |"
          for r in found.results if r.category == "both"),
        "",
        "## Every config",
        "",
        "| config | Envoy accepts | pylon accepts | category | pylon's first error (field path: message) |",
        "|---|---|---|---|---|",
        *(f"| {r.path} | {yes(r.envoy.accepted)} | {yes(r.pylon.accepted)} | {r.category} | "
          f"{cell(r.pylon.error) or '-'} |" for r in found.results),
        "",
        "Categories: both (accepted by both), envoy-only (a pylon gap: counts against the goal), missing-files "
        "(both refuse for a file that is not here), neither / pylon-only (Envoy refuses for another reason).",
        "",
    ]
    return "\n".join(lines)


def envoy_version(envoy: str) -> str:
    out = subprocess.run([envoy, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", out)  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return found.group(1) if found else out.strip()


def main() -> int:
    from pylon import __version__
    from pylon.bench.targets import find_envoy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="directories or files of Envoy configs")
    parser.add_argument("--name", default="conformance", help="results file name (without .json/.md)")
    parser.add_argument("--source", default="", help="where the configs come from (repository, commit, date)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per validation")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="validations at a time (2 CPUs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    envoy = find_envoy()
    found = survey(args.paths, envoy, args.timeout, args.jobs, network_isolation())
    summary = totals(found)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "envoy": envoy_version(envoy), "pylon": __version__, "timeout": args.timeout,
            "source": args.source or ", ".join(map(str, args.paths))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "skipped": found.skipped,
         "configs": [asdict(result) for result in found.results]}, indent=1))
    text = markdown(found, summary, meta)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Istio's perf modes (istio/tools perf/benchmark runner flags) as paths through `pylon mesh`, sans-IO.

Workloads, as Istio's `templates/fortio.yaml` deploys them:

  server        `pylon echo` with a sidecar            (Istio's fortioserver, captured port 8080)
  server-plain  `pylon echo`, `run --no-sidecar`       (the server's uncaptured port, 8077 in Istio)
  client        idle, with a sidecar                   (fortioclient)
  client-plain  idle, `run --no-sidecar`               (a client outside the mesh)

Each mode names the pod its load runs in, the echo workload it reaches, and every proxy on the path with its
role, so a run knows whose CPU and memory to read.
"""

from __future__ import annotations

from dataclasses import dataclass

GW = "istio-ingressgateway"
GW_CMB = "ingress-cryptomb"
GW_NS = "istio-system"
HTTP_PORT, HTTPS_PORT = 8080, 8443  # Istio's gateway container ports (its Service maps 80/443 onto them)
SERVER, SERVER_PLAIN, CLIENT, CLIENT_PLAIN = "server", "server-plain", "client", "client-plain"
ECHO_PORT, CLIENT_PORT = 8080, 9000

#: The proxies a run can cross, in Istio's CSV order (its container names: CSV_ROLE).
ROLES = ("client", "server", "gateway")


def host(name: str, namespace: str = "default") -> str:
    """A service's name as every pod resolves it."""
    return f"{name}.{namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Mode:
    """One of Istio's perf modes: where the load runs, what it reaches, which proxies it crosses."""

    name: str
    client: str  # the workload the load runs in
    server: str  # the echo workload that answers
    target: str  # URL without the path
    roles: tuple[tuple[str, str], ...]  # (role, workload) of each proxy on the path
    tls: bool = False
    new_connection: bool = False

    @property
    def workloads(self) -> tuple[str, ...]:
        """The pods this mode needs besides gateways."""
        return (self.client, self.server)


def _ingress(name: str, gateway: str, port: int, scheme: str, new_connection: bool = False) -> Mode:
    return Mode(name, CLIENT_PLAIN, SERVER, f"{scheme}://{host(gateway, GW_NS)}:{port}",
                (("gateway", gateway), ("server", SERVER)), tls=scheme == "https", new_connection=new_connection)


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("baseline", CLIENT_PLAIN, SERVER_PLAIN, f"http://{host(SERVER_PLAIN)}:{ECHO_PORT}", ()),
    Mode("client_sidecar", CLIENT, SERVER_PLAIN, f"http://{host(SERVER_PLAIN)}:{ECHO_PORT}", (("client", CLIENT),)),
    Mode("server_sidecar", CLIENT_PLAIN, SERVER, f"http://{host(SERVER)}:{ECHO_PORT}", (("server", SERVER),)),
    Mode("both_sidecar", CLIENT, SERVER, f"http://{host(SERVER)}:{ECHO_PORT}",
         (("client", CLIENT), ("server", SERVER))),
    _ingress("ingress_http", GW, HTTP_PORT, "http"),
    _ingress("ingress_https", GW, HTTPS_PORT, "https"),
    _ingress("ingress_https_newconn", GW, HTTPS_PORT, "https", new_connection=True),
    _ingress("ingress_https_newconn_cryptomb", GW_CMB, HTTPS_PORT, "https", new_connection=True),
)}  # fmt: skip

#: Istio's names for the sidecar-overhead modes: no sidecar, server sidecar, both sidecars.
SIDECAR_MODES = ("baseline", "server_sidecar", "both_sidecar")
#: Load through the ingress gateway: keep-alive, and a new TLS connection (a full handshake) per request.
INGRESS_MODES = ("ingress_https", "ingress_https_newconn")


def workloads_for(modes: list[Mode]) -> list[str]:
    """The workloads (pods other than gateways) the modes need, in a stable order."""
    order = (SERVER, SERVER_PLAIN, CLIENT, CLIENT_PLAIN)
    needed = {w for mode in modes for w in mode.workloads}
    return [w for w in order if w in needed]


def qps_of(mode: Mode, qps: int, newconn_qps: int) -> int:
    """The requested rate: a handshake per request costs far more, so those modes run at their own rate."""
    return newconn_qps if mode.new_connection else qps

"""`pylon mesh up | run | exec | status | down`: the mesh's life cycle, kept in the state directory.

`up` starts pilot (with its CA) in namespace `pm-istiod` on the hub's bridge. `run` gives a workload
a pod namespace with Istio's capture rules, a service (a VIP and a name every pod resolves), a token
for its service account and an injected sidecar (`pylon agent` running the proxy as uid 1337), then
starts the workload's command. `down` removes everything the mesh made, and also what a crashed one
left (it looks for the `pm-` names, not only at the state).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pylon.mesh import kube_proxy, netns
from pylon.mesh.install import GatewayDeployment, Install, PodProxyConfig, effective_proxy_config
from pylon.mesh.key_homes import KeyPlacement, make_token
from pylon.mesh.layout import (BRIDGE, HUB, HUB_ADDRESS, PILOT_ADDRESS, PROXY_UID, allocate, check_name, netns_name,
                               service_host, state_dir, veth_name)  # fmt: skip
from pylon.mesh.resources import (WorkloadSpec, pod_hosts_file, resolv_conf, service_document,
                                  workload_document)  # fmt: skip
from pylon.mesh.state import MeshState, Process, Workload
from pylon.pilot.istio.resources import Resource, decode_resource
from pylon.pilot.source.directory import load_directory, read_documents
from pylon.pilot.source.secrets import decode_secret

PILOT_NETNS = netns_name("istiod")
PILOT_INDEX = 2
XDS_PORT, CA_PORT, DEBUG_PORT, MONITORING_PORT = 15010, 15012, 8080, 15014
PYLON = [sys.executable, "-m", "pylon.cli"]


class Mesh:
    """The mesh under `root` (the state directory)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_dir()
        self.state_file = self.root / "state.json"
        self.config_dir = self.root / "config"
        self.ca_dir = self.root / "cacerts"
        self.logs = self.root / "logs"
        self.ignored: list[str] = []  # Kubernetes-only settings met while starting pods, by name, for the user
        self.notes: list[str] = []  # resources not applied to a pod, and why

    # ------------------------------------------------------------------ up / down

    def up(self, install: Install, proxy: str = "pylon") -> None:
        netns.check_host()
        if self.state_file.exists() or netns.mesh_namespaces():
            raise netns.MeshError("a mesh is already up (or left over): run `pylon mesh down` first")
        for directory in (self.config_dir, self.ca_dir, self.logs, self.root / "secrets", self.root / "w"):
            directory.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        state = MeshState(proxy=proxy)
        try:
            netns.create_hub()
            netns.create_pod(PILOT_NETNS, veth_name(PILOT_INDEX), PILOT_ADDRESS)
            command = [*PYLON, "pilot", "--config-dir", str(self.config_dir), "--ca-dir", str(self.ca_dir),
                       "--secrets-dir", str(self.root / "secrets"),
                       "--grpc-address", f"{PILOT_ADDRESS}:{XDS_PORT}", "--ca-address", f"{PILOT_ADDRESS}:{CA_PORT}",
                       "--debug-address", f"{PILOT_ADDRESS}:{DEBUG_PORT}",
                       "--monitoring-address", f"{PILOT_ADDRESS}:{MONITORING_PORT}"]  # fmt: skip
            if install.mesh_config:
                (self.root / "mesh.yaml").write_text(yaml.safe_dump(install.mesh_config))
                command += ["--mesh-config", str(self.root / "mesh.yaml")]
            pilot = netns.spawn(PILOT_NETNS, command, self.logs / "pilot.log")
            state.processes.append(Process("pilot", pilot.pid, netns.start_ticks(pilot.pid)))
            state.save(self.state_file)
            _wait_for_port(HUB, str(PILOT_ADDRESS), CA_PORT, pilot, self.logs / "pilot.log")
            for gateway in install.gateways:
                self._start_gateway(state, gateway)
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        """Stop every process and remove every namespace, file and rule the mesh made; what was removed."""
        removed: list[str] = []
        if self.state_file.exists():
            state = MeshState.load(self.state_file)
            for workload in state.workloads.values():
                for process in workload.processes:
                    netns.stop(process.pid, process.start_ticks)
            for process in state.processes:
                netns.stop(process.pid, process.start_ticks)
        if shutil.which("ip"):
            for name in sorted(netns.mesh_namespaces(), key=lambda n: n == HUB):  # the hub (and its veths) last
                netns.delete_namespace(name)
                removed.append(name)
        for leftover in netns.ETC_NETNS.glob("pm-*") if netns.ETC_NETNS.exists() else []:
            shutil.rmtree(leftover, ignore_errors=True)
        if self.root.exists():
            try:
                shutil.rmtree(self.root)
            except FileNotFoundError:  # emptied meanwhile by another cleanup: take what is left
                shutil.rmtree(self.root, ignore_errors=True)
            removed.append(str(self.root))
        return removed

    # ------------------------------------------------------------------ workloads

    def run(self, name: str, namespace: str, service_account: str, ports: tuple[int, ...],
            labels: dict[str, str], command: list[str], service: str = "",
            sidecar: bool = True, proxy: str = "", cert_ttl: int = 0) -> WorkloadSpec:  # fmt: skip
        """Start `command` as workload `name` with an injected sidecar (or none: no capture either, as a pod
        outside the mesh), backing `service` (default: its name); returns where it runs."""
        netns.check_host()
        check_name(name, "workload")
        check_name(namespace, "namespace")
        service = check_name(service or name, "service")
        state = self._state()
        if name in state.workloads:
            raise netns.MeshError(f"workload {name} already runs (pylon mesh status)")
        slot = allocate({w.index for w in state.workloads.values()} | {PILOT_INDEX})
        peer = next((w.spec for w in state.workloads.values()
                     if w.spec.service == service and w.spec.namespace == namespace), None)  # fmt: skip
        if peer is not None and peer.ports != ports:
            raise netns.MeshError(f"service {service}.{namespace} serves port(s) {peer.ports}, not {ports}")
        vip = peer.vip if peer is not None else str(slot.vip)
        spec = WorkloadSpec(name=name, namespace=namespace, service_account=service_account, address=str(slot.address),
                            vip=vip, ports=ports, labels=labels, service=service, sidecar=sidecar,
                            proxy=proxy, cert_ttl=cert_ttl)  # fmt: skip
        pod_config = self._pod_proxy_config(spec, spec.all_labels, sidecar=True) if sidecar else None
        if pod_config is not None:
            spec = dataclasses.replace(spec, dns_capture=pod_config.captures_dns)
        pod = netns_name(name)
        workdir = self.root / "w" / name
        workdir.mkdir(parents=True)
        workload = Workload(spec=spec, index=slot.index)
        state.workloads[name] = workload
        state.save(self.state_file)
        netns.create_pod(pod, veth_name(slot.index), slot.address)
        netns.check_route(pod, PILOT_ADDRESS)
        if sidecar:
            netns.load_capture(pod, dns=spec.dns_capture)
        if peer is None:
            (self.config_dir / f"service-{namespace}-{service}.yaml").write_text(yaml.safe_dump(service_document(spec)))
        (self.config_dir / f"workload-{name}.yaml").write_text(yaml.safe_dump(workload_document(spec)))
        self._write_names(state)
        if pod_config is not None:
            self._start_agent(state, workload, workdir, "sidecar", spec.all_labels, pod_config)
        if command:
            app = netns.spawn(pod, command, self.logs / f"{name}.log")
            workload.processes.append(Process("app", app.pid, netns.start_ticks(app.pid)))
            state.save(self.state_file)
        return spec

    def _start_gateway(self, state: MeshState, gateway: GatewayDeployment) -> None:
        """An ingress gateway pod: no capture (a gateway is reached directly), its agent runs a router with the
        install's labels and proxy.istio.io/config."""
        name = check_name(gateway.name, "gateway")
        slot = allocate({w.index for w in state.workloads.values()} | {PILOT_INDEX})
        spec = WorkloadSpec(name=name, namespace=gateway.namespace, service_account=f"{name}-service-account",
                            address=str(slot.address), vip="", ports=(), labels=gateway.labels)  # fmt: skip
        workload = state.workloads[name] = Workload(spec=spec, index=slot.index, kind="gateway")
        state.save(self.state_file)
        netns.create_pod(netns_name(name), veth_name(slot.index), slot.address)
        netns.check_route(netns_name(name), PILOT_ADDRESS)
        workdir = self.root / "w" / name
        workdir.mkdir(parents=True)
        self._write_names(state)
        placement = KeyPlacement()
        if gateway.keys:
            if state.proxy != "pylon":
                raise netns.MeshError(f"gateway {name}: its keys in {gateway.keys} need `--proxy pylon` (stock Envoy "
                                      "has neither the keyd nor the SGX provider)")  # fmt: skip
            placement = self._place_keys(state, workload, workdir, gateway.keys)
        pod_config = self._pod_proxy_config(spec, gateway.labels, gateway.proxy_config)
        self._start_agent(state, workload, workdir, "router", gateway.labels, pod_config, placement)

    def _place_keys(self, state: MeshState, workload: Workload, workdir: Path, keys: str) -> KeyPlacement:
        """The gateway pod's key home, as the `keyd` or `pkcs11` injection template asks: a `pylon keyd` running in
        the pod (a process of its own, as Intel's SDS server is a container of its own), or a SoftHSM2 token made
        for the pod (its files under the pod's directory, PINs in files only root reads)."""
        pod = netns_name(workload.spec.name)
        if keys == "keyd":
            sock = workdir / "keyd.sock"
            log_path = self.logs / f"{workload.spec.name}-keyd.log"
            keyd = netns.spawn(pod, [*PYLON, "keyd", "--listen", f"unix:{sock}"], log_path)
            workload.processes.append(Process("keyd", keyd.pid, netns.start_ticks(keyd.pid)))
            state.save(self.state_file)
            _wait_for_file(sock, keyd, log_path)
            return KeyPlacement(args=["--keyd", f"unix:{sock}"])
        return make_token(workdir / "softhsm")

    def exec(self, name: str, command: list[str]) -> int:
        """Run `command` in workload `name`'s namespace (as `kubectl exec`), attached to this terminal."""
        state = self._state()
        if name not in state.workloads:
            raise netns.MeshError(f"no workload {name} (pylon mesh status lists them)")
        return subprocess.run(["ip", "netns", "exec", netns_name(name), *command]).returncode

    def apply(self, path: Path) -> int:
        """Add (or replace) the resources of `path` in the running mesh, as `kubectl apply -f`: Istio resources go
        to pilot's watched config directory, Kubernetes Secrets (gateway credentials) to its secrets directory;
        everything is checked first as pilot reads it (errors name file, document and field). The number of
        resources applied."""
        self._state()
        documents = [doc for doc in read_documents(path) if doc is not None]
        secrets = [(i, doc) for i, doc in enumerate(documents) if isinstance(doc, dict) and doc.get("kind") == "Secret"]
        config = [(i, doc) for i, doc in enumerate(documents) if not (isinstance(doc, dict) and doc.get("kind") == "Secret")]
        for index, doc in secrets:
            decode_secret(doc, str(path), index)
        for index, doc in config:
            decode_resource(doc, str(path), index)
        for directory, docs in ((self.root / "secrets", secrets), (self.config_dir, config)):
            target = directory / f"applied-{path.name}"
            if docs:
                target.write_text(yaml.safe_dump_all([doc for _, doc in docs]))
            else:
                target.unlink(missing_ok=True)
        return len(documents)

    def status(self) -> MeshState:
        return self._state()

    def sync_status(self) -> list[dict[str, Any]]:
        """Pilot's /debug/syncz (what each proxy was sent and ACKed), fetched from the hub over the bridge."""
        self._state()
        netns.check_route(HUB, PILOT_ADDRESS, BRIDGE)
        answer = subprocess.run(["ip", "netns", "exec", HUB, "curl", "-s", "-m", "5",
                                 f"http://{PILOT_ADDRESS}:{DEBUG_PORT}/debug/syncz"], capture_output=True, text=True)
        if answer.returncode != 0:
            raise netns.MeshError(f"pilot's debug endpoint does not answer (curl exit {answer.returncode})")
        return json.loads(answer.stdout)

    def log_paths(self, name: str) -> list[Path]:
        """The workload's own log and its sidecar's (pilot's for `istiod`)."""
        if name == "istiod":
            return [self.logs / "pilot.log"]
        if name not in self._state().workloads:
            raise netns.MeshError(f"no workload {name} (pylon mesh status lists them)")
        return [path for path in (self.logs / f"{name}.log", self.logs / f"{name}-sidecar.log") if path.exists()]

    # ------------------------------------------------------------------ details

    def _state(self) -> MeshState:
        if not self.state_file.exists():
            raise netns.MeshError("no mesh is up (pylon mesh up)")
        return MeshState.load(self.state_file)

    def _proxy_config_resources(self) -> list[Resource]:
        """The ProxyConfig resources in pilot's config directory (`apply` checked them; an error now is the
        directory's, named by file and field)."""
        result = load_directory(self.config_dir)
        if result.errors:
            raise result.errors[0]
        return [resource for resource in result.resources if resource.kind == "ProxyConfig"]

    def _write_names(self, state: MeshState) -> None:
        """Every pod resolves every service (and gateway) by name: through its sidecar's DNS proxy (pilot's name
        table), or else from a hosts file (rewritten in place); with Kubernetes' search list either way. Pods
        without a sidecar reach service VIPs through kube-proxy-like rules, refreshed with the endpoints."""
        specs = [w.spec for w in state.workloads.values()]
        services: dict[tuple[str, int], list[str]] = {}
        for spec in specs:
            for port in spec.ports if spec.vip else ():
                services.setdefault((spec.vip, port), []).append(spec.address)
        for name, workload in state.workloads.items():
            netns.write_etc(netns_name(name), "hosts", pod_hosts_file(workload.spec, specs))
            # The hub runs no resolver: a name not of the mesh fails at once (port unreachable), as nothing may
            # leave the machine.
            netns.write_etc(netns_name(name), "resolv.conf", resolv_conf(workload.spec.namespace, str(HUB_ADDRESS)))
            if workload.kind == "sidecar" and not workload.spec.sidecar:
                netns.load_rules(netns_name(name), kube_proxy.ruleset(services))

    def _pod_proxy_config(self, spec: WorkloadSpec, labels: dict[str, str], annotation: str = "",
                          sidecar: bool = False) -> PodProxyConfig:  # fmt: skip
        """The pod's ProxyConfig: MeshConfig `defaultConfig`, the applied ProxyConfig resources and the pod's
        `proxy.istio.io/config` annotation, merged now as Istio's injector does (a later change reaches only pods
        started after it). Departure: a sidecar captures DNS unless its proxyMetadata says otherwise (Istio's
        default is off, with kube-dns beside it; here the agent's DNS proxy is how pods find services)."""
        mesh_file = self.root / "mesh.yaml"
        mesh_config = yaml.safe_load(mesh_file.read_text()) or {} if mesh_file.exists() else {}
        return effective_proxy_config(mesh_config, annotation, self._proxy_config_resources(), spec.namespace, labels,
                                      dns_capture_by_default=sidecar)  # fmt: skip

    def _start_agent(self, state: MeshState, workload: Workload, workdir: Path, proxy_type: str,
                     labels: dict[str, str], proxy_config: PodProxyConfig, keys: KeyPlacement | None = None) -> None:
        """The pod's `pylon agent` (Istio's pilot-agent) with its token, its ProxyConfig and where its keys live,
        running the proxy; waits until ready (with DNS capture, that includes pilot's name table)."""
        spec = workload.spec
        keys = keys or KeyPlacement()
        extra: list[str] = list(keys.args)
        self.ignored += proxy_config.ignored
        self.notes += proxy_config.notes
        if proxy_config.text:
            (workdir / "proxy-config.yaml").write_text(proxy_config.text)
            extra += ["--proxy-config", str(workdir / "proxy-config.yaml")]
        token = workdir / "token"
        issued = subprocess.run([*PYLON, "pilot", "token", "--ca-dir", str(self.ca_dir), "--namespace",
                                 spec.namespace, "--service-account", spec.service_account],
                                capture_output=True, text=True, check=True)  # fmt: skip
        token.write_text(issued.stdout.strip())
        shutil.chown(workdir, PROXY_UID, PROXY_UID)
        shutil.chown(token, PROXY_UID, PROXY_UID)
        token.chmod(0o600)
        command = [*PYLON, "agent", "--type", proxy_type, "--namespace", spec.namespace,
                   "--service-account", spec.service_account, "--pod-name", f"{spec.name}-0", "--ip", spec.address,
                   "--ca-address", f"{PILOT_ADDRESS}:{CA_PORT}", "--discovery-address", f"{PILOT_ADDRESS}:{CA_PORT}",
                   "--root-cert", str(self.ca_dir / "root-cert.pem"), "--token-file", str(token),
                   "--workdir", str(workdir), "--proxy", spec.proxy or state.proxy,
                   "--health-address", "127.0.0.1:15021", *_proxy_user(spec.proxy or state.proxy),
                   *(["--ttl", str(spec.cert_ttl)] if spec.cert_ttl else []),
                   *(arg for key, value in labels.items() for arg in ("--labels", f"{key}={value}")), *extra]
        agent = netns.spawn(netns_name(spec.name), command, self.logs / f"{spec.name}-sidecar.log", proxy_group=True,
                            env=keys.env)  # fmt: skip
        workload.processes.append(Process("sidecar", agent.pid, netns.start_ticks(agent.pid)))
        state.save(self.state_file)
        _wait_ready(netns_name(spec.name), agent, self.logs / f"{spec.name}-sidecar.log")


def _proxy_user(proxy: str) -> list[str]:
    """Envoy runs as Istio's uid 1337. `pylon proxy` stays uid 0 in group 1337 (the capture rules let that group
    through, as istio-iptables' --proxy-gid): it spawns its workers with the Python interpreter, which uid 1337
    may not be able to execute (here it lives in root's home)."""
    return ["--proxy-uid", str(PROXY_UID)] if proxy == "envoy" else []


def _wait_for_port(namespace: str, host: str, port: int, proc: subprocess.Popen, log: Path,
                   timeout: float = 30) -> None:  # fmt: skip
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise netns.MeshError(f"exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        if subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", probe],
                          capture_output=True).returncode == 0:  # fmt: skip
            return
        time.sleep(0.2)
    raise netns.MeshError(f"nothing listens on {host}:{port} after {timeout:.0f}s; see {log}:\n{_tail(log)}")


def _wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until `path` exists (a server's Unix socket), or `proc` exits, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise netns.MeshError(f"exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise netns.MeshError(f"no {path} after {timeout:.0f}s; see {log}:\n{_tail(log)}")
        time.sleep(0.1)


def _wait_ready(pod: str, agent: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until the sidecar's /healthz/ready says 200 (a certificate and a proxy with its config)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise netns.MeshError(f"the sidecar exited with {agent.returncode}; see {log}:\n{_tail(log)}")
        answer = subprocess.run(["ip", "netns", "exec", pod, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 "--max-time", "1", "http://127.0.0.1:15021/healthz/ready"], capture_output=True)
        if answer.stdout == b"200":
            return
        time.sleep(0.3)
    raise netns.MeshError(f"the sidecar of {pod} is not ready after {timeout:.0f}s; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


__all__ = ["Mesh", "service_host"]

"""What a running mesh is made of, kept in `state.json` under the state directory, so every `pylon mesh`
command (and `down` after a crash) knows the workloads, their addresses and the processes started."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pylon.mesh.resources import WorkloadSpec


@dataclass
class Process:
    """A process the mesh started: its pid and the start time the kernel gives it (so a recycled pid of
    another program is never signalled)."""

    name: str
    pid: int
    start_ticks: int


@dataclass
class Workload:
    spec: WorkloadSpec
    index: int
    processes: list[Process] = field(default_factory=list)
    kind: str = "sidecar"  # or "gateway": no capture, no service entry, its agent runs a router


@dataclass
class MeshState:
    proxy: str = "pylon"
    processes: list[Process] = field(default_factory=list)  # pilot, gateway
    workloads: dict[str, Workload] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = {"proxy": self.proxy, "processes": [asdict(p) for p in self.processes],
                "workloads": {name: {"spec": asdict(w.spec), "index": w.index, "kind": w.kind,
                                     "processes": [asdict(p) for p in w.processes]}
                              for name, w in self.workloads.items()}}  # fmt: skip
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> MeshState:
        data: dict[str, Any] = json.loads(path.read_text())
        workloads = {}
        for name, w in data["workloads"].items():
            spec = w["spec"]
            spec["ports"] = tuple(spec["ports"])
            workloads[name] = Workload(spec=WorkloadSpec(**spec), index=w["index"], kind=w["kind"],
                                       processes=[Process(**p) for p in w["processes"]])  # fmt: skip
        return cls(proxy=data["proxy"], processes=[Process(**p) for p in data["processes"]], workloads=workloads)

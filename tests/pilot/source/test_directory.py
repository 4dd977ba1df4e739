"""The directory source: multi-document files, all errors at once, and debounced reloads."""

from __future__ import annotations

from pathlib import Path

from pylon.pilot.source.debounce import Debouncer
from pylon.pilot.source.directory import CachedLoader, DirectoryWatcher, LoadResult, load_directory
from tests.pilot.builders import doc, gateway, write_yaml

ROUTE = [{"route": [{"destination": {"host": "a"}}]}]  # a VirtualService needs a route (Istio's validation)


def test_loads_every_document_of_every_file_and_skips_hidden(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", gateway(8080), doc("VirtualService", "v", {"hosts": ["*"], "http": ROUTE}))
    (tmp_path / "sub").mkdir()
    write_yaml(tmp_path / "sub" / "b.yml", doc("VirtualService", "w", {"hosts": ["*"], "http": ROUTE}))
    write_yaml(tmp_path / ".hidden.yaml", doc("Bogus", "x", {}))
    (tmp_path / "notes.txt").write_text("not config")
    result = load_directory(tmp_path)
    assert result.errors == []
    assert sorted(r.name for r in result.resources) == ["gw", "v", "w"]


def test_reports_all_errors_with_file_and_document(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", gateway(8080), doc("VirtualService", "v", {"hosts": ["*"], "http": [{"route": [
        {"destination": {"host": "a"}}], "fault": {"abort": {"http2Error": "x"}}}]}))
    (tmp_path / "b.yaml").write_text("kind: Gateway\nkind: Gateway\n")
    result = load_directory(tmp_path)
    assert [str(e) for e in result.errors] == [
        f"config error in {tmp_path}/a.yaml (document 2, VirtualService default/v): spec.http[0].fault.abort.http2Error: "
        "not supported by pylon pilot yet",
        f"config error in {tmp_path}/b.yaml: invalid YAML at line 2, column 1: while constructing a mapping, "
        "found duplicate key 'kind'",
    ]


def test_debouncer_waits_for_quiet_but_not_forever() -> None:
    debouncer = Debouncer(after=0.1, max_delay=10.0)
    assert not debouncer.due(0.0)
    debouncer.change(0.0)
    debouncer.change(0.05)
    assert not debouncer.due(0.14) and debouncer.due(0.16)
    debouncer.fire()
    for step in range(200):  # a change every 60 ms never leaves 100 ms of quiet
        debouncer.change(step * 0.06)
    assert debouncer.due(10.0)


def test_watcher_reloads_once_after_a_burst_of_edits(tmp_path: Path) -> None:
    loads: list[LoadResult] = []
    write_yaml(tmp_path / "a.yaml", gateway(8080))
    watcher = DirectoryWatcher(tmp_path, loads.append)
    assert not watcher.poll(0.0)
    write_yaml(tmp_path / "a.yaml", gateway(8081))
    assert not watcher.poll(1.0)
    write_yaml(tmp_path / "b.yaml", gateway(8082, name="gw2"))
    assert not watcher.poll(1.05)
    assert watcher.poll(1.2)
    assert len(loads) == 1 and sorted(r.spec.servers[0].port.number for r in loads[0].resources) == [8081, 8082]
    assert not watcher.poll(2.0)


def test_cached_loader_rereads_only_changed_files_and_gives_what_a_full_load_gives(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", gateway(8080), doc("VirtualService", "v", {"hosts": ["*"], "http": ROUTE}))
    write_yaml(tmp_path / "b.yaml", doc("VirtualService", "w", {"hosts": ["*"], "http": ROUTE}))
    load = CachedLoader()
    first = load(tmp_path)
    write_yaml(tmp_path / "b.yaml", doc("VirtualService", "w", {"hosts": ["changed.example.com"], "http": ROUTE}))
    (tmp_path / "c.yaml").write_text("kind: Gateway\nkind: Gateway\n")
    second = load(tmp_path)
    full = load_directory(tmp_path)
    assert second.resources == full.resources and [str(e) for e in second.errors] == [str(e) for e in full.errors]
    assert second.resources[0] is first.resources[0] and second.resources[1] is first.resources[1]  # a.yaml kept
    assert second.resources[2].spec.hosts == ["changed.example.com"]  # b.yaml re-read, not served stale
    (tmp_path / "a.yaml").unlink()
    (tmp_path / "c.yaml").unlink()
    assert [r.name for r in load(tmp_path).resources] == ["w"]

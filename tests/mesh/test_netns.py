"""`mesh down` against namespaces that vanish under it (another cleanup racing it), without touching real ones."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.mesh import netns


def fake_ip(monkeypatch: pytest.MonkeyPatch, existing: set[str]) -> list[tuple[str, ...]]:
    """`ip` as a namespace that is already gone answers: pids and del fail, list no longer names it."""
    calls: list[tuple[str, ...]] = []

    def run(*command: str) -> str:
        calls.append(command)
        if command[:3] == ("ip", "netns", "list"):
            return "".join(f"{name}\n" for name in sorted(existing))
        if command[:3] in (("ip", "netns", "pids"), ("ip", "netns", "del")) and command[3] not in existing:
            raise netns.MeshError(f"{' '.join(command)}: Cannot open network namespace: No such file or directory")
        return ""

    monkeypatch.setattr(netns, "run", run)
    return calls


def test_a_namespace_gone_meanwhile_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_ip(monkeypatch, existing=set())
    netns.delete_namespace("pm-gone")
    assert ("ip", "netns", "del", "pm-gone") not in calls


def test_a_namespace_that_still_exists_but_fails_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*command: Any) -> str:
        if command[:3] == ("ip", "netns", "list"):
            return "pm-stuck\n"
        raise netns.MeshError(f"{' '.join(command)}: Operation not permitted")

    monkeypatch.setattr(netns, "run", run)
    with pytest.raises(netns.MeshError, match="not permitted"):
        netns.delete_namespace("pm-stuck")

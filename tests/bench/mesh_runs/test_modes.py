"""Istio's perf modes as paths through the mesh: who loads, who answers, which proxies are crossed."""

from __future__ import annotations

from pylon.bench.mesh_runs.modes import (GW, GW_CMB, INGRESS_MODES, MODES, SIDECAR_MODES, host, qps_of,
                                         workloads_for)  # fmt: skip


def test_the_sidecar_modes_cross_the_sidecars_their_names_say() -> None:
    assert MODES["baseline"].roles == ()
    assert MODES["server_sidecar"].roles == (("server", "server"),)
    assert MODES["client_sidecar"].roles == (("client", "client"),)
    assert MODES["both_sidecar"].roles == (("client", "client"), ("server", "server"))
    assert [MODES[m].client for m in SIDECAR_MODES] == ["client-plain", "client-plain", "client"]
    assert [MODES[m].server for m in SIDECAR_MODES] == ["server-plain", "server", "server"]
    assert MODES["both_sidecar"].target == "http://server.default.svc.cluster.local:8080"


def test_ingress_modes_go_through_the_gateway_to_the_meshed_server() -> None:
    keep, new = (MODES[m] for m in INGRESS_MODES)
    for mode in (keep, new):
        assert mode.client == "client-plain" and mode.server == "server" and mode.tls
        assert mode.roles == (("gateway", GW), ("server", "server"))
        assert mode.target == f"https://{host(GW, 'istio-system')}:8443"
    assert not keep.new_connection and new.new_connection
    assert MODES["ingress_http"].target.startswith("http://") and not MODES["ingress_http"].tls
    assert MODES["ingress_https_newconn_cryptomb"].roles[0] == ("gateway", GW_CMB)


def test_only_the_workloads_the_modes_need_are_started() -> None:
    assert workloads_for([MODES[m] for m in INGRESS_MODES]) == ["server", "client-plain"]
    assert workloads_for([MODES[m] for m in (*SIDECAR_MODES, *INGRESS_MODES)]) == [
        "server", "server-plain", "client", "client-plain"]


def test_handshake_modes_run_at_their_own_rate() -> None:
    assert qps_of(MODES["ingress_https_newconn"], 1000, 200) == 200
    assert qps_of(MODES["ingress_https"], 1000, 200) == 1000

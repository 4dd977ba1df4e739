"""MeshConfig access logging: `accessLogFile`, `accessLogEncoding`, `accessLogFormat`, as istiod applies them.

Without a Telemetry resource (pylon pilot has none), istiod falls back to the
mesh config: when `accessLogFile` is set, every HTTP connection manager and
every tcp_proxy it builds - sidecar inbound and outbound, gateways, the
passthrough and blackhole catch-alls - gets one `envoy.access_loggers.file`
writing to that path (`/dev/stdout` included). The format is `accessLogFormat`
when given (TEXT: a newline is added if missing; JSON: the object's keys and
operators), else Istio's own defaults below, which add the reason fields
(RESPONSE_CODE_DETAILS, CONNECTION_TERMINATION_DETAILS, the upstream TLS failure)
to Envoy's default format. Source: istio/istio `pilot/pkg/model/telemetry_logging.go`
(EnvoyTextLogFormat, EnvoyJSONLogFormatIstio, FileAccessLogFromMeshConfig) and
`pilot/pkg/networking/core/accesslog.go` (setHTTPAccessLog, setTCPAccessLog).

The logs are added after the generators have built a proxy's listeners, to
every filter of those two types wherever it sits, so a new listener shape gets
its log without its generator knowing; EnvoyFilter patches still come after.
Istio's listener-level log (response flag NR: no filter chain matched) is not
written: it needs an access log `filter`, which pylon proxy does not support yet.
"""

from __future__ import annotations

import copy

from pylon.pilot.gen.types import HCM, LISTENER, TCP_PROXY, Json, Resources
from pylon.pilot.istio.mesh import MeshConfig, json_access_log_format

FILE_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOGGED_FILTERS = (HCM, TCP_PROXY)

ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

ISTIO_JSON_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}


def mesh_access_log(mesh: MeshConfig) -> Json | None:
    """The `access_log` entry the mesh config asks for; None when `accessLogFile` is empty (Istio's default)."""
    if not mesh.access_log_file:
        return None
    if mesh.access_log_encoding == "JSON":
        fields = json_access_log_format(mesh.access_log_format) if mesh.access_log_format else ISTIO_JSON_FORMAT
        log_format: Json = {"json_format": fields}
    else:
        text = mesh.access_log_format or ISTIO_TEXT_FORMAT
        log_format = {"text_format_source": {"inline_string": text if text.endswith("\n") else text + "\n"}}
    return {"name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_ACCESS_LOG, "path": mesh.access_log_file, "log_format": log_format}}  # fmt: skip


def add_access_logs(resources: Resources, mesh: MeshConfig) -> Resources:
    """`resources` with the mesh's access log on every HTTP connection manager and tcp_proxy of every listener."""
    entry = mesh_access_log(mesh)
    if entry is None:
        return resources
    done: set[int] = set()  # the chains of one port (TLS and plaintext) may share their filter objects
    for listener in resources.get(LISTENER, {}).values():
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                config = network_filter.get("typed_config", {})
                if config.get("@type") in LOGGED_FILTERS and id(config) not in done:
                    done.add(id(config))
                    config.setdefault("access_log", []).append(copy.deepcopy(entry))
    return resources

"""A grpcio envoy.service.auth.v3.Authorization server for tests: it answers by the request's path.

`/deny...`: PERMISSION_DENIED with a DeniedHttpResponse (status 401, a body, headers); `/deny-plain`: a bare
PERMISSION_DENIED status; `/unauthenticated`: status UNAUTHENTICATED without a denied response; `/error`: the
call fails (INTERNAL); `/slow`: answers OK after 1 s; anything else: OK with an OkHttpResponse that sets,
appends and removes headers and adds some to the client's response. Every CheckRequest is kept (`seen`).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2


def _option(key: str, value: str, action: Any = None, append: bool | None = None) -> base_pb2.HeaderValueOption:
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
    if action is not None:
        option.append_action = action
    if append is not None:
        option.append.value = append
    return option


class _Service(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, server: "GrpcAuthzServer") -> None:
        self.server = server

    def Check(self, request: external_auth_pb2.CheckRequest, context: Any) -> external_auth_pb2.CheckResponse:
        with self.server.lock:
            self.server.seen.append(request)
        path = request.attributes.request.http.path
        if path.startswith("/deny-plain"):
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED))
        if path.startswith("/deny"):
            denied = external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized), body="denied by policy",
                headers=[_option("x-reason", "bad token"), _option("content-type", "text/html")])
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                                                   denied_response=denied)
        if path.startswith("/unauthenticated"):
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED))
        if path.startswith("/error"):
            context.abort(grpc.StatusCode.INTERNAL, "authz is sick")
        if path.startswith("/slow"):
            time.sleep(1.0)
        overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        ok = external_auth_pb2.OkHttpResponse(
            headers=[_option("x-current-user", "alice", overwrite), _option("x-append", "appended", append=True),
                     _option("x-action-append", "appended", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
                     _option("x-only-if-absent", "new", base_pb2.HeaderValueOption.ADD_IF_ABSENT)],
            headers_to_remove=["x-drop-me"],
            response_headers_to_add=[_option("x-other", "on-success"), _option("x-resp", "added", append=True)])
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)


class GrpcAuthzServer:
    """The server on a free loopback port, in a thread of its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[external_auth_pb2.CheckRequest] = []
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Service(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def last(self) -> external_auth_pb2.CheckRequest | None:
        with self.lock:
            return self.seen[-1] if self.seen else None

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()

    def close(self) -> None:
        self.server.stop(0)

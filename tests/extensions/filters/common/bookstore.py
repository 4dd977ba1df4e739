"""A bookstore gRPC service with google.api.http rules, as a FileDescriptorSet built without protoc.

The transcoder tests give it to pylon and Envoy as `proto_descriptor`, and serve it with grpcio
(`serve_bookstore`): GetShelf, CreateShelf, ListBooks, StreamBooks (server streaming, a custom verb),
Echo (body `*`) and Fail (answers the gRPC status the request names).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "bookstore"
SERVICE = f"{PACKAGE}.Bookstore"


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, *fields: tuple[str, int, int, str]) -> None:
    message = file.message_type.add(name=name)
    for field_name, number, kind, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=kind, label=F.LABEL_OPTIONAL)
        if field_name.endswith("books") or field_name == "tags":
            field.label = F.LABEL_REPEATED
        if type_name:
            field.type_name = type_name


def _method(service: Any, name: str, request: str, response: str, rule: http_pb2.HttpRule | None,
            server_streaming: bool = False) -> None:
    method = service.method.add(name=name, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}",
                                server_streaming=server_streaming)
    if rule is not None:
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)


def bookstore_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="bookstore.proto", package=PACKAGE, syntax="proto3",
                                              dependency=["google/api/annotations.proto"])
    _message(file, "Shelf", ("id", 1, F.TYPE_INT64, ""), ("theme", 2, F.TYPE_STRING, ""),
             ("tags", 3, F.TYPE_STRING, ""))
    _message(file, "GetShelfRequest", ("shelf", 1, F.TYPE_INT64, ""))
    _message(file, "CreateShelfRequest", ("shelf", 1, F.TYPE_MESSAGE, f".{PACKAGE}.Shelf"))
    _message(file, "ListBooksRequest", ("shelf", 1, F.TYPE_INT64, ""), ("author", 2, F.TYPE_STRING, ""),
             ("page_size", 3, F.TYPE_INT32, ""))
    _message(file, "Book", ("id", 1, F.TYPE_INT64, ""), ("author", 2, F.TYPE_STRING, ""), ("title", 3, F.TYPE_STRING, ""))
    _message(file, "ListBooksResponse", ("books", 1, F.TYPE_MESSAGE, f".{PACKAGE}.Book"))
    _message(file, "FailRequest", ("code", 1, F.TYPE_INT32, ""), ("message", 2, F.TYPE_STRING, ""))
    service = file.service.add(name="Bookstore")
    _method(service, "GetShelf", "GetShelfRequest", "Shelf", http_pb2.HttpRule(get="/v1/shelves/{shelf}"))
    _method(service, "CreateShelf", "CreateShelfRequest", "Shelf", http_pb2.HttpRule(post="/v1/shelves", body="shelf"))
    _method(service, "ListBooks", "ListBooksRequest", "ListBooksResponse",
            http_pb2.HttpRule(get="/v1/shelves/{shelf}/books"))
    _method(service, "StreamBooks", "ListBooksRequest", "Book", http_pb2.HttpRule(get="/v1/shelves/{shelf}/books:stream"),
            server_streaming=True)
    _method(service, "Echo", "Shelf", "Shelf", http_pb2.HttpRule(
        post="/v1/echo", body="*", additional_bindings=[http_pb2.HttpRule(put="/v1/echo/{id}", body="*")]))
    _method(service, "Fail", "FailRequest", "Shelf", http_pb2.HttpRule(get="/v1/fail/{code}"))
    _method(service, "Hidden", "Shelf", "Shelf", None)  # no http rule: reached only through auto_mapping
    return file


def descriptor_set() -> bytes:
    """bookstore.proto and what it imports, dependencies first."""
    files = descriptor_pb2.FileDescriptorSet()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    files.file.append(bookstore_file())
    return files.SerializeToString()


def classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set())
    for file in files.file:
        pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in ("Shelf", "GetShelfRequest", "CreateShelfRequest", "ListBooksRequest", "Book",
                         "ListBooksResponse", "FailRequest")}


def serve_bookstore(port: int) -> grpc.Server:
    """The service on 127.0.0.1:port (grpcio), with fixed answers the tests know."""
    c = classes()

    def get_shelf(request: Any, context: Any) -> Any:
        return c["Shelf"](id=request.shelf, theme=f"theme-{request.shelf}")

    def create_shelf(request: Any, context: Any) -> Any:
        return c["Shelf"](id=99, theme=request.shelf.theme, tags=list(request.shelf.tags))

    def books(request: Any) -> list[Any]:
        count = request.page_size or 2
        return [c["Book"](id=i, author=request.author or "anon", title=f"book {i} of {request.shelf}")
                for i in range(1, count + 1)]

    def list_books(request: Any, context: Any) -> Any:
        return c["ListBooksResponse"](books=books(request))

    def stream_books(request: Any, context: Any) -> Any:
        yield from books(request)

    def fail(request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode(next(s for s in grpc.StatusCode if s.value[0] == request.code).value),
                      request.message or f"failed with {request.code}")

    def unary(function: Any, request: str) -> Any:
        return grpc.unary_unary_rpc_method_handler(function, request_deserializer=c[request].FromString,
                                                   response_serializer=lambda m: m.SerializeToString())

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "GetShelf": unary(get_shelf, "GetShelfRequest"),
        "CreateShelf": unary(create_shelf, "CreateShelfRequest"),
        "ListBooks": unary(list_books, "ListBooksRequest"),
        "StreamBooks": grpc.unary_stream_rpc_method_handler(stream_books, request_deserializer=c["ListBooksRequest"].FromString,
                                                            response_serializer=lambda m: m.SerializeToString()),
        "Echo": unary(lambda request, context: request, "Shelf"),
        "Hidden": unary(lambda request, context: request, "Shelf"),
        "Fail": unary(fail, "FailRequest"),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server

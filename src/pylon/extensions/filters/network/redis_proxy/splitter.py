"""The command splitter, sans-IO: one client command -> the upstream commands it becomes, and their replies ->
the one reply the client gets (Envoy's CommandSplitter, its error texts observed from Envoy 1.40).

A key's cluster is its route's (the longest matching prefix, else the catch-all); the host within the cluster is
the cluster balancer's pick for the key's hash key (with `enable_hashtagging`, the part between `{` and the next
`}` when it is not empty, so related keys can share a host).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pylon.extensions.filters.network.redis_proxy import resp
from pylon.extensions.filters.network.redis_proxy.commands import kind

INVALID_REQUEST = "invalid request"
UPSTREAM_FAILURE = "upstream failure"
NO_UPSTREAM_HOST = "no upstream host"


@dataclass(slots=True)
class RouteTarget:
    prefix: str
    cluster: str
    remove_prefix: bool


class Router:
    """prefix_routes: the longest prefix of a key names its cluster (case-insensitively if asked)."""

    def __init__(self, config: Any) -> None:
        self.case_insensitive = bool(config is not None and config.case_insensitive)
        routes = config.routes if config is not None else []
        self.routes = sorted((RouteTarget(self._fold(r.prefix), r.cluster, r.remove_prefix) for r in routes),
                             key=lambda r: -len(r.prefix))
        catch_all = config.catch_all_route if config is not None else None
        self.catch_all = RouteTarget("", catch_all.cluster, catch_all.remove_prefix) if catch_all else None

    def _fold(self, text: str) -> str:
        return text.lower() if self.case_insensitive else text

    def route(self, key: bytes) -> tuple[str, bytes] | None:
        """(cluster, the key as sent upstream) or None when no route takes it."""
        text = self._fold(key.decode("utf-8", "surrogateescape"))
        for target in self.routes:
            if text.startswith(target.prefix):
                return target.cluster, key[len(target.prefix.encode("utf-8", "surrogateescape")):] \
                    if target.remove_prefix else key
        if self.catch_all is not None:
            return self.catch_all.cluster, key
        return None


def hash_key(key: bytes, hashtagging: bool) -> bytes:
    """The part of the key the balancer hashes."""
    if hashtagging:
        start = key.find(b"{")
        if start >= 0:
            end = key.find(b"}", start + 1)
            if end > start + 1:
                return key[start + 1:end]
    return key


@dataclass(slots=True)
class Fragment:
    """One upstream command: to `cluster`, host picked on `hash_key`."""

    cluster: str
    hash_key: bytes
    args: list[bytes]


@dataclass(slots=True)
class Split:
    """What one client command became: a reply at once, or fragments whose replies `join` combines."""

    command: str  # the stat name ("" when no command stat counts it)
    reply: resp.Reply | None = None
    fragments: list[Fragment] = field(default_factory=list)
    join: str = "single"  # single, mget, mset or sum
    unsupported: bool = False
    invalid: bool = False


def split(args: list[bytes], router: Router, hashtagging: bool) -> Split:
    """The plan for one command (`args[0]` is its name) that is neither local nor refused by auth."""
    name = args[0].decode("utf-8", "replace").lower()
    how = kind(name)
    if how == "unknown" or how == "not_yet":
        return Split("", resp.error(unknown_command(args)), unsupported=True)
    if how == "eval":
        if len(args) < 4:
            return Split(name, resp.error(f"wrong number of arguments for '{args[0].decode(errors='replace')}' "
                                          "command"))
        return _keyed(name, args, 3, router, hashtagging)
    if len(args) < 2:
        return Split("", resp.error(INVALID_REQUEST), invalid=True)
    if how == "simple":
        return _keyed(name, args, 1, router, hashtagging)
    if how == "mset":
        if len(args) % 2 == 0:
            return Split(name, resp.error(f"wrong number of arguments for '{args[0].decode(errors='replace')}' "
                                          "command"))
        pairs = [(args[i], [b"set", args[i], args[i + 1]]) for i in range(1, len(args), 2)]
    else:
        verb = b"get" if how == "mget" else args[0]
        pairs = [(key, [verb, key]) for key in args[1:]]
    plan = Split(name, join="mget" if how == "mget" else how)
    for key, command in pairs:
        plan.fragments.append(_fragment(key, command, 1, router, hashtagging))
    return plan


def unknown_command(args: list[bytes]) -> str:
    first = args[1].decode("utf-8", "replace") if len(args) > 1 else ""
    return f"ERR unknown command '{args[0].decode('utf-8', 'replace')}', with args beginning with: {first}"


def _keyed(name: str, args: list[bytes], at: int, router: Router, hashtagging: bool) -> Split:
    return Split(name, fragments=[_fragment(args[at], list(args), at, router, hashtagging)])


def _fragment(key: bytes, command: list[bytes], at: int, router: Router, hashtagging: bool) -> Fragment:
    routed = router.route(key)
    if routed is None:
        return Fragment("", b"", command)  # no route: answered "no upstream host"
    cluster, sent_key = routed
    command[at] = sent_key
    return Fragment(cluster, hash_key(sent_key, hashtagging), command)


def join(plan: Split, replies: list[resp.Reply], failures: int) -> tuple[resp.Reply, bool]:
    """The client's reply from the fragments' (in fragment order; `failures` of them the proxy's own failure
    replies), and whether the command counts as a success (an upstream's error reply to a whole command does:
    the upstream answered)."""
    if plan.join == "single":
        return replies[0], failures == 0
    errors = sum(1 for reply in replies if _failed(plan.join, reply))
    if plan.join == "mget":
        return resp.array(replies), errors == 0
    if errors:
        return resp.error(f"finished with {errors} error(s)"), False
    if plan.join == "mset":
        return resp.simple("OK"), True
    return resp.integer(sum(int(reply.value) for reply in replies)), True  # type: ignore[arg-type]


def _failed(how: str, reply: resp.Reply) -> bool:
    if how == "mget":
        return reply.kind == resp.ERROR
    if how == "mset":
        return not (reply.kind == resp.SIMPLE and reply.value == "OK")
    return reply.kind != resp.INTEGER

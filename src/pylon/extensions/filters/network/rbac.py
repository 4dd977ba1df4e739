"""envoy.filters.network.rbac: allow or refuse whole connections by RBAC policies (Istio's TCP authorization).

Decisions are the shared engine's (`filters/common/rbac.py`) on the connection
alone: principals by peer certificate and addresses, permissions by local
address, port and SNI. There is no request: `url_path` never matches (so
`not_rule` of one always does), `remote_ip` is the peer, as in Envoy.

What Envoy 1.40 does, observed:

- A denied connection is closed, with no response flag (its tcp_proxy access
  log has `-`) and `rbac_access_denied_matched_policy[<policy>]` (`[none]`
  when an ALLOW policy did not match) in %CONNECTION_TERMINATION_DETAILS%. LOG allows.
- Stats: `<stat_prefix>rbac.{allowed,denied}` and
  `<stat_prefix>rbac.<shadow_rules_stat_prefix>{shadow_allowed,shadow_denied}`,
  each prefix ending in one "." (`tcp.` and `tcp` both give `tcp.rbac.allowed`).
  Without `rules` nothing is enforced or counted (shadow rules still are);
  `rules: {}` (ALLOW, no policy) refuses every connection.
- `header` rules are refused by Envoy's network filter at load time, also
  inside `not_rule` and sets; pylon refuses them the same way, by path.
- `enforcement_type`: Envoy decides when the client's first bytes arrive
  (ONE_TIME_ON_FIRST_BYTE) or on each read (CONTINUOUS); the tcp_proxy
  connects upstream meanwhile, so a server-first upstream's greeting reaches a
  client that will be refused, and a client that never sends is never judged
  (nor counted). pylon decides once, when the connection is established
  (`on_connection`), before any upstream connection. Both types are
  accepted and give Envoy's verdict and counts for every client that sends
  something (nothing a policy reads changes during a connection in pylon, which
  keeps no dynamic metadata for a connection, so CONTINUOUS cannot decide otherwise later); the
  differences are a refused client seeing nothing of the upstream, and a
  client that never sends being judged and counted.

Refused by name: `matcher`, `shadow_matcher`, `delay_deny`.
"""

from __future__ import annotations

from typing import Any, Literal

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NonEmptyStr, NotSupportedYet
from pylon.config.errors import FieldError, join_path
from pylon.extensions.filters.common import rbac as common
from pylon.proxy.connection_info import ConnectionInfo
from pylon.proxy.filters.network import register_network_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


class RBAC(EnvoyStruct, kw_only=True):
    """extensions.filters.network.rbac.v3.RBAC."""

    rules: common.RBAC | None = None
    matcher: NotSupportedYet | None = None
    shadow_rules: common.RBAC | None = None
    shadow_matcher: NotSupportedYet | None = None
    shadow_rules_stat_prefix: str = ""
    stat_prefix: NonEmptyStr
    enforcement_type: Literal["ONE_TIME_ON_FIRST_BYTE", "CONTINUOUS"] = "ONE_TIME_ON_FIRST_BYTE"
    delay_deny: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        for field in ("rules", "shadow_rules"):
            rules = getattr(self, field)
            found = next(common.header_matchers(rules), None) if rules is not None else None
            if found is not None:
                raise FieldError(join_path(field, found[0]), "header rules are not supported by the RBAC network "
                                                             "filter (a connection has no headers; Envoy refuses "
                                                             "them too)")


class RbacNetworkFilter:
    """One filter chain's network RBAC filter in one worker."""

    def __init__(self, name: str, config: RBAC, stats: Any) -> None:
        self.name = name
        prefix = common.stat_part(config.stat_prefix) + "rbac."
        shadow_prefix = prefix + common.stat_part(config.shadow_rules_stat_prefix)
        self.allowed = stats.counter(prefix + "allowed")
        self.denied = stats.counter(prefix + "denied")
        self.shadow_allowed = stats.counter(shadow_prefix + "shadow_allowed")
        self.shadow_denied = stats.counter(shadow_prefix + "shadow_denied")
        self.rules = common.Engine(config.rules) if config.rules is not None else None
        self.shadow = common.Engine(config.shadow_rules) if config.shadow_rules is not None else None

    def on_connection(self, info: ConnectionInfo) -> bool:
        if self.rules is None and self.shadow is None:
            return True
        facts = common.Facts(info)
        if self.shadow is not None:
            (self.shadow_allowed if self.shadow.evaluate(facts).allowed else self.shadow_denied).inc()
        if self.rules is None:
            return True
        decision = self.rules.evaluate(facts)
        if decision.allowed:
            self.allowed.inc()
        else:
            self.denied.inc()
            info.termination_details = common.denied_details(decision.policy)
        return decision.allowed


registry.register_typed(registry.NETWORK_FILTER, TYPE_URL, RBAC)
register_network_filter(RBAC, lambda name, config, worker: RbacNetworkFilter(name, config, worker.stats))

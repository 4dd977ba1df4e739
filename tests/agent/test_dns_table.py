"""The agent's answers from a name table, sans-IO: Istio's alternate names for Kubernetes entries, the search
expansion CNAME, wildcards, families, and what is left to the pod's resolvers."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from pylon.agent.dns_table import NameInfo, answer, build_lookup_table

TABLE = {
    "reviews.default.svc.cluster.local": NameInfo(("10.0.0.1", "10.0.0.2"), "Kubernetes", "reviews", "default"),
    "ratings.other.svc.cluster.local": NameInfo(("10.0.0.3",), "Kubernetes", "ratings", "other"),
    "api.example.test": NameInfo(("10.9.9.9", "fd00::9"), "External"),
    "*.wild.test": NameInfo(("10.9.9.10",), "External"),
    "broken.example.test": NameInfo(("not-an-ip",), "External"),
}
LOOKUP = build_lookup_table(TABLE, "default", "default.svc.cluster.local",
                            ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"])  # fmt: skip


def _ask(name: str, rdtype: str = "A") -> dns.message.Message | None:
    return answer(LOOKUP, dns.message.make_query(name, rdtype))


def _ips(reply: dns.message.Message | None) -> list[str]:
    assert reply is not None
    return sorted(item.to_text() for rrset in reply.answer if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                  for item in rrset)  # fmt: skip


def test_kubernetes_entries_answer_their_short_names_as_istios_agent() -> None:
    for name in ("reviews.default.svc.cluster.local", "reviews.default", "reviews.default.svc", "reviews"):
        assert _ips(_ask(name)) == ["10.0.0.1", "10.0.0.2"], name
    assert _ips(_ask("ratings.other")) == ["10.0.0.3"]
    assert _ask("ratings") is None  # a short name only in the proxy's own namespace


def test_external_entries_answer_their_name_in_either_family() -> None:
    reply = _ask("api.example.test")
    assert reply is not None and reply.flags & dns.flags.AA and _ips(reply) == ["10.9.9.9"]
    assert _ips(_ask("api.example.test", "AAAA")) == ["fd00::9"]
    assert _ask("api.example") is None and _ask("example.test") is None
    assert _ask("broken.example.test") is None  # no usable address: not the table's


def test_an_entry_without_the_family_asked_gets_an_empty_answer_not_nxdomain() -> None:
    reply = _ask("reviews.default.svc.cluster.local", "AAAA")
    assert reply is not None and reply.rcode() == dns.rcode.NOERROR and not reply.answer


def test_the_first_search_expansion_is_a_cname_to_the_name() -> None:
    reply = _ask("api.example.test.default.svc.cluster.local")
    assert reply is not None
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert reply.answer[0][0].target.to_text() == "api.example.test."
    assert reply.answer[1].name.to_text() == "api.example.test." and _ips(reply) == ["10.9.9.9"]
    assert _ask("api.example.test.svc.cluster.local") is None  # only the first search domain


def test_wildcards_answer_names_under_them_by_the_name_asked() -> None:
    reply = _ask("x.y.wild.test")
    assert reply is not None and _ips(reply) == ["10.9.9.10"] and reply.answer[0].name.to_text() == "x.y.wild.test."
    assert _ask("wild.test") is None


def test_other_types_and_empty_questions() -> None:
    assert _ask("api.example.test", "MX") is None  # the resolver's
    empty = dns.message.Message()
    reply = answer(LOOKUP, empty)
    assert reply is not None and reply.rcode() == dns.rcode.SERVFAIL


def test_addresses_rotate_between_answers() -> None:
    firsts = set()
    for _ in range(64):
        reply = _ask("reviews")
        assert reply is not None
        firsts.add(next(iter(reply.answer[0])).to_text())
    assert firsts == {"10.0.0.1", "10.0.0.2"}

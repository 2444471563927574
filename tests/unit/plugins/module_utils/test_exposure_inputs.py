"""What a host exposes, as declared: a mapping's allowed_sources (dnat_rule's options), the role's services that
are routed or take an allowed_sources (services_plan), and the verification of a mapping from a client its list
leaves out (the probe expects nothing back, and verify.yml shows it as denied)."""
from __future__ import annotations

from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils._dnat import Mapping, mappings_from_params
from ansible_collections.netns.expose.plugins.module_utils._probe import Attempt, Prober, failure_message, parse_checks
from ansible_collections.netns.expose.plugins.module_utils._services import services_plan
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput, address_in
from ansible_collections.netns.expose.plugins.plugin_utils._verify import report, summary

from test_dnat import params
from test_services import DB, WEB, plan, with_changes

# A mapping's allowed_sources, as dnat_rule takes them


def one(**fields):
    return {"name": "web", "port": 8090, "to_address": "10.244.1.2", **fields}


@pytest.mark.parametrize("given, taken", [
    (["10.211.55.0/24"], ("10.211.55.0/24",)),
    # Bare addresses are /32 networks; overlapping and adjacent networks merge, as an interval set holds them.
    (["10.211.55.7"], ("10.211.55.7/32",)),
    (["10.211.55.128/25", "10.211.55.0/25", "10.211.55.7"], ("10.211.55.0/24",)),
    (["192.168.7.0/24", "10.0.0.0/8", "10.1.2.3"], ("10.0.0.0/8", "192.168.7.0/24")),
    ([" 10.211.55.7 "], ("10.211.55.7/32",)),
    (["0.0.0.0/0", "10.0.0.0/8"], ("0.0.0.0/0",)),
])
def test_allowed_sources_are_networks_merged_and_sorted(given, taken):
    [mapping] = mappings_from_params(params(**one(allowed_sources=given)))
    assert mapping.allowed_sources == taken


def test_without_allowed_sources_every_client_is_let_in():
    [mapping] = mappings_from_params(params(**one()))
    assert mapping.allowed_sources is None


@pytest.mark.parametrize("address, allowed", [
    ("10.211.55.0", True), ("10.211.55.127", True), ("10.211.55.128", False), ("192.168.7.7", True),
    ("192.168.7.8", False), ("10.244.1.2", False),
])
def test_a_client_is_let_in_by_its_source_address(address, allowed):
    mapping = Mapping(name="web", port=8090, to_address="10.244.1.2", to_port=9090,
                      allowed_sources=("10.211.55.0/25", "192.168.7.7/32"))
    assert address_in(address, mapping.allowed_sources) is allowed


def test_the_summary_names_the_first_networks_of_the_list():
    four = Mapping(name="web", port=8090, to_address="10.244.1.2", to_port=9090,
                   allowed_sources=("10.0.0.0/24", "10.0.2.0/24", "10.0.4.0/24", "10.0.6.0/24"))
    assert four.summary() == "tcp 8090 -> 10.244.1.2:9090, from 10.0.0.0/24, 10.0.2.0/24, 10.0.4.0/24 and 1 more"
    assert Mapping(name="ping", protocol="icmp", to_address="10.244.1.2", allowed_sources=("10.0.0.0/24",)).summary() == \
        "icmp -> 10.244.1.2, from 10.0.0.0/24"


@pytest.mark.parametrize("rules, field, problem", [
    ([one(name="a", port=1), one(name="b", port=2), one(name="c", port=3),
      one(name="d", port=4, allowed_sources=["10.0.0.0/8", "10.0.0.300"])],
     "rules[3].allowed_sources[1]", "'10.0.0.300' is not an IPv4 address or network in CIDR notation"),
    ([one(allowed_sources=["10.211.55.1/24"])], "rules[0].allowed_sources[0]", "has host bits set"),
    ([one(allowed_sources=["fd00::1"])], "rules[0].allowed_sources[0]", "is not an IPv4 address or network"),
    ([one(allowed_sources=[])], "rules[0].allowed_sources", "is empty, which would let no client in"),
    ([one(allowed_sources="10.0.0.0/8")], "rules[0].allowed_sources", "must be a list of IPv4 addresses or networks"),
])
def test_a_bad_allowed_sources_is_refused_naming_the_entry_and_the_item(rules, field, problem):
    with pytest.raises(InvalidInput) as refused:
        mappings_from_params(params(rules=rules))
    assert refused.value.field == field and problem in str(refused.value)


def test_the_single_mappings_list_is_checked_too_and_is_no_default_for_rules_entries():
    with pytest.raises(InvalidInput, match=r"^allowed_sources\[0\]: 'lan' is not an IPv4 address"):
        mappings_from_params(params(**one(allowed_sources=["lan"])))
    rules = [one(), one(name="b", port=2, allowed_sources=["10.1.0.0/16"])]
    mappings = mappings_from_params(params(allowed_sources=["10.0.0.0/8"], rules=rules))
    assert [mapping.allowed_sources for mapping in mappings] == [None, ("10.1.0.0/16",)]
    # Removing needs only the names: a list given with state absent is not looked at.
    assert mappings_from_params(params(name="web", state="absent", allowed_sources=[])) == [Mapping(name="web")]


# The role's services: routed, and allowed_sources


def test_routed_services_are_left_to_the_hosts_routes_and_the_others_are_guarded():
    result = plan([WEB, with_changes(DB, routed=True)])
    assert result["guarded_networks"] == ["10.244.1.0/24"] and result["routed_networks"] == ["10.244.2.0/24"]
    assert result["hairpin_sources"] == ["10.244.1.0/24", "10.244.2.0/24"], "hairpin is for every service"
    # From the command line (-e), as text.
    assert plan([with_changes(WEB, routed="yes")])["routed_networks"] == ["10.244.1.0/24"]
    assert plan([WEB, DB])["routed_networks"] == []
    # Removing: the same lists, so that their rules go too.
    absent = services_plan([WEB, with_changes(DB, routed=True)], state="absent", facts={})
    assert (absent["guarded_networks"], absent["routed_networks"]) == (["10.244.1.0/24"], ["10.244.2.0/24"])


def test_services_of_one_namespace_must_agree_on_routed():
    admin = with_changes(WEB, name="admin", ports=[{"protocol": "tcp", "host_port": 8091, "ns_port": 9091}])
    assert plan([with_changes(WEB, routed=True), with_changes(admin, routed=True)])["routed_networks"] == ["10.244.1.0/24"]
    with pytest.raises(InvalidInput) as refused:
        plan([WEB, with_changes(admin, routed=True)])
    assert refused.value.field == "expose_services[1] (admin).routed"
    assert str(refused.value).endswith("is true and false in expose_services[0] (http-web), which has the same "
                                       "namespace: set it alike")
    with pytest.raises(InvalidInput, match=r"^expose_services\[0\] \(http-web\)\.routed: 'maybe' is not a boolean"):
        plan([with_changes(WEB, routed="maybe")])


def test_a_services_allowed_sources_go_to_each_of_its_mappings_and_checks_and_a_ports_own_wins():
    service = with_changes(WEB, allowed_sources=["10.211.55.128/25", "10.211.55.0/25"], ports=[
        {"protocol": "tcp", "host_port": 8090, "ns_port": 9090},
        {"protocol": "udp", "host_port": 8053, "ns_port": 53, "probe": "hi", "allowed_sources": ["192.168.7.7"]},
        {"protocol": "icmp"}])
    result = plan([service, DB])
    lists = {mapping["name"]: mapping.get("allowed_sources") for mapping in result["mappings"]}
    assert lists == {"http-web-tcp-8090": ["10.211.55.0/24"], "http-web-udp-8053": ["192.168.7.7/32"],
                     "http-web-icmp": ["10.211.55.0/24"], "db-tcp-5432": None}
    assert [target.get("allowed_sources") for target in result["targets"]] == list(lists.values())
    # What dnat_rule and probe take: lists, not tuples.
    assert all(isinstance(target["allowed_sources"], list) for target in result["targets"][:3])


@pytest.mark.parametrize("service, field, problem", [
    (with_changes(WEB, allowed_sources=[]), "expose_services[0] (http-web).allowed_sources", "is empty"),
    (with_changes(WEB, allowed_sources=["10.211.55.0/24", "lan"]), "expose_services[0] (http-web).allowed_sources[1]",
     "'lan' is not an IPv4 address or network"),
    (with_changes(WEB, ports=[{"protocol": "tcp", "host_port": 8090},
                              {"protocol": "tcp", "host_port": 8091, "allowed_sources": ["10.211.55.1/24"]}]),
     "expose_services[0] (http-web).ports[1].allowed_sources[0]", "has host bits set"),
    (with_changes(WEB, ports=[{"protocol": "tcp", "host_port": 8090, "allowed_sources": []}]),
     "expose_services[0] (http-web).ports[0].allowed_sources", "is empty"),
])
def test_a_bad_allowed_sources_of_a_service_or_port_names_its_field(service, field, problem):
    with pytest.raises(InvalidInput) as refused:
        plan([service])
    assert refused.value.field == field and problem in str(refused.value)


def test_an_allowed_sources_that_is_not_a_list_names_the_service_field():
    with pytest.raises(InvalidInput, match=r"^expose_services\[0\] \(http-web\)\.allowed_sources: must be a list, not str"):
        plan([with_changes(WEB, allowed_sources="10.211.55.0/24")])


# The verification from a client the list leaves out


def check(**fields):
    return {"target": "web", "address": "10.211.55.122", "protocol": "tcp", "port": 8090, **fields}


def test_a_checks_allowed_sources_are_validated_as_a_mappings():
    [checked] = parse_checks([check(allowed_sources=["10.211.55.0/25", "10.211.55.128/25"])], 3.0, 0)
    assert checked.allowed_sources == ("10.211.55.0/24",)
    assert parse_checks([check()], 3.0, 0)[0].allowed_sources is None
    for given, message in ((["10.211.55.0/24", "x"], r"^checks\[0\]\.allowed_sources\[1\]: 'x' is not an IPv4"),
                           ([], r"^checks\[0\]\.allowed_sources: is empty"),
                           ("10.211.55.0/24", r"^checks\[0\]\.allowed_sources: must be a list")):
        with pytest.raises(InvalidInput, match=message):
            parse_checks([check(allowed_sources=given)], 3.0, 0)


def probed(item, attempts, source="10.211.55.9", retries=3):
    """The result of one check whose attempts give `attempts` in turn, from `source`; and the fakes."""
    source_of, sleep = mock.Mock(return_value=source), mock.Mock()
    prober = Prober(3.0, retries, sleep=sleep, source_of=source_of)
    [parsed] = parse_checks([item], 3.0, retries)
    with mock.patch.object(Prober, "attempt", side_effect=attempts) as attempt:
        result = prober.run(parsed)
    return result, attempt, source_of, sleep


def test_a_denied_client_that_gets_nothing_back_is_ok_after_one_attempt():
    result, attempt, source_of, sleep = probed(check(allowed_sources=["10.211.55.128/25"]),
                                               [Attempt(False, "timed out after 3 s")])
    source_of.assert_called_once_with("10.211.55.122")
    assert attempt.call_count == 1 and sleep.call_count == 0, "no retry: nothing is expected back"
    assert result["ok"] and result["denied"] and result["attempts"] == 1 and result["latency_ms"] is None
    assert result["detail"] == ("denied as declared: source 10.211.55.9 is not in the allowed_sources of web "
                                "(timed out after 3 s)")
    assert failure_message([result]).startswith("0 of 1 checks failed")


def test_a_denied_client_that_gets_an_answer_fails_naming_its_source():
    answer = Attempt(True, "HTTP 200", 1.5, {"status": 200, "body": "hello"})
    result, attempt, _source_of, _sleep = probed(check(allowed_sources=["10.211.55.128/25"]), [answer])
    assert attempt.call_count == 1
    assert not result["ok"] and result["denied"]
    assert result["detail"] == "answered (HTTP 200), though source 10.211.55.9 is not in the allowed_sources of web"
    assert (result["latency_ms"], result["status"], result["body"]) == (1.5, 200, "hello")
    assert "web tcp/8090 (10.211.55.122): answered (HTTP 200), though" in failure_message([result])


def test_an_allowed_client_is_checked_as_any_other_with_its_retries():
    answers = [Attempt(False, "connection refused"), Attempt(True, "HTTP 200", 1.0, {"status": 200, "body": "up"})]
    result, attempt, _source_of, sleep = probed(check(allowed_sources=["10.211.55.0/28"]), answers)
    assert attempt.call_count == 2 and sleep.call_count == 1
    assert result["ok"] and "denied" not in result and result["attempts"] == 2
    # Without a list, where the check comes from is not even asked.
    result, _attempt, source_of, _sleep = probed(check(), [Attempt(True, "HTTP 200", 1.0)])
    source_of.assert_not_called()
    assert result["ok"] and "denied" not in result


def test_a_udp_check_with_nothing_to_check_is_skipped_even_from_a_denied_client():
    result, attempt, source_of, _sleep = probed(check(protocol="udp", port=8053, allowed_sources=["10.0.0.0/8"]), [],
                                                source="192.168.7.7")
    assert result["skipped"] and attempt.call_count == 0 and source_of.call_count == 0


def test_verify_shows_a_denial_as_denied_and_reports_only_an_answer_as_a_failure():
    denied, _a, _s, _z = probed(check(allowed_sources=["10.211.55.128/25"]), [Attempt(False, "timed out after 3 s")])
    answered, _a, _s, _z = probed(check(port=8091, allowed_sources=["10.211.55.128/25"]), [Attempt(True, "HTTP 200", 2.0)])
    probes = [{"item": "m1", "results": [{**denied, "check": "http"}, {**answered, "check": "http"}]}]
    rows = summary(probes).splitlines()
    assert rows[1].split()[5] == "denied" and "denied as declared: source 10.211.55.9" in rows[1]
    assert rows[2].split()[5] == "FAILED" and "answered (HTTP 200), though source 10.211.55.9" in rows[2]
    plans = {"m1": {"targets": [{"mapping": "web-tcp-8090", "netns": "ns1"}, {"mapping": "web-tcp-8091", "netns": "ns1"}]}}
    text = report(probes, plans)
    assert text.startswith("1 of 2 checks failed:") and "port 8091" in text and "port 8090" not in text

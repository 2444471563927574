"""What verify.yml prints: the summary table and the report of failed checks (plugin_utils/_verify.py)."""
from __future__ import annotations

import pytest

from ansible_collections.netns.expose.plugins.plugin_utils._verify import by_master, checks, report, summary

JSON_REPLY = '{"Age":12,"Msg":"hello world! this is DNAT+bridge+Veth pair Test!"}'


def check(**fields):
    base = {"target": "web", "protocol": "tcp", "check": "http", "port": 8090, "ok": True, "skipped": False,
            "latency_ms": 2.25, "detail": "HTTP 200", "body": None, "reply": None}
    return {**base, **fields}


def target(mapping, netns="ns1"):
    return {"mapping": mapping, "netns": netns}


PROBES = [
    {"item": "web1", "results": [
        check(body=JSON_REPLY),
        check(protocol="udp", check="udp", port=8053, ok=False, detail="connection refused", latency_ms=None),
        check(protocol="icmp", check="icmp", port=None, detail="echo reply", latency_ms=0.3),
    ]},
    {"item": "web2", "results": [check(body="line one\r\n  line two\n")]},
]
PLANS = {"web1": {"targets": [target("web-tcp-8090"), target("web-udp-8053"), target("web-icmp")]},
         "web2": {"targets": [target("web-tcp-8090")]}}


def test_the_summary_shows_each_reply_as_text_on_one_line():
    assert summary(PROBES).splitlines() == [
        "master           service          proto check   port  result    latency  reply",
        "web1             web              tcp   http    8090  ok         2.2 ms  " + JSON_REPLY,
        "web1             web              udp   udp     8053  FAILED          -  connection refused",
        "web1             web              icmp  icmp       -  ok         0.3 ms  echo reply",
        "web2             web              tcp   http    8090  ok         2.2 ms  line one line two",
    ]


def test_the_report_names_each_failure_and_where_to_look():
    assert report(PROBES, PLANS).splitlines() == [
        "1 of 4 checks failed:",
        "master web1: udp port 8053 (web) failed: connection refused",
        "Where to look next, as root on master web1:",
        "  nft list ruleset | grep web-udp-8053  # is the mapping there?",
        "  ip netns exec ns1 ss -ltnu            # does anything listen in ns1?",
        "  ip netns exec ns1 ip route            # has ns1 its default route?",
        "Or see where each failed flow stops, and why, hop by hop (see \"Explaining a mapping\" in the README):",
        "  ansible-playbook -i <inventory> netns.expose.explain -e expose_explain_masters=web1 -e expose_explain_mappings=8053",
    ]


def test_an_icmp_failure_asks_for_no_listener_and_skipped_checks_are_no_failure():
    probes = [{"item": "web1", "results": [
        check(protocol="icmp", check="icmp", port=None, ok=False, detail="no reply within 1 s"),
        check(protocol="udp", check="udp", port=8053, ok=False, skipped=True, detail="skipped"),
    ]}]
    plans = {"web1": {"targets": [target("web-icmp", "ns7"), target("web-udp-8053")]}}
    assert report(probes, plans).splitlines() == [
        "1 of 2 checks failed:",
        "master web1: icmp (web) failed: no reply within 1 s",
        "Where to look next, as root on master web1:",
        "  nft list ruleset | grep web-icmp  # is the mapping there?",
        "  ip netns exec ns7 ip route        # has ns7 its default route?",
        "Or see where each failed flow stops, and why, hop by hop (see \"Explaining a mapping\" in the README):",
        "  ansible-playbook -i <inventory> netns.expose.explain -e expose_explain_masters=web1 -e expose_explain_mappings=icmp",
    ]
    assert report([{"item": "web1", "results": [check()]}], plans) == ""
    assert "explain -e expose_explain_masters=web1" in report(probes, plans, inventory="fleet.yml").replace("-i fleet.yml netns.expose.", "")


def test_one_probe_call_checks_every_master_and_its_results_go_back_to_each():
    plans = {"web1": {"targets": [{"target": "web", "protocol": "tcp", "address": "10.0.0.1", "port": 80,
                                   "mapping": "web-tcp-80", "netns": "ns1"},
                                  {"target": "web", "protocol": "icmp", "address": "10.0.0.1", "mapping": "web-icmp",
                                   "netns": "ns1"}]},
             "web2": {"targets": [{"target": "db", "protocol": "tcp", "address": "10.0.0.2", "port": 5432,
                                   "mapping": "db-tcp-5432", "netns": "ns2"}]}}
    assert checks(plans) == [{"target": "web", "protocol": "tcp", "address": "10.0.0.1", "port": 80},
                             {"target": "web", "protocol": "icmp", "address": "10.0.0.1"},
                             {"target": "db", "protocol": "tcp", "address": "10.0.0.2", "port": 5432}]
    results = [check(port=80), check(protocol="icmp"), check(target="db", port=5432)]
    assert by_master(results, plans) == [{"item": "web1", "results": results[:2]}, {"item": "web2", "results": results[2:]}]
    with pytest.raises(ValueError, match="2 probe results for 3 checks of 2 masters"):
        by_master(results[:2], plans)

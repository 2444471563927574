"""The picture of an explained flow (plugin_utils/_explain_svg.py): a well-formed SVG that shows, as text, what each
hop saw, the chains on the master and the findings, and where the flow stopped."""
from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.netns.expose.plugins.plugin_utils._explain_svg import RED, hop_diagram, text_width

SVG_NS = "{http://www.w3.org/2000/svg}"
HOP_NAMES = ["slave eth0", "master eth0", "master veth1b", "ns1 veth1a"]


def hop(name, request, reply, requests=5, replies=4):
    host, interface = ("slave", "eth0") if name == "slave eth0" else ("master1", name.split()[1])
    return {"hop": name, "host": host, "interface": interface, "request": request, "reply": reply,
            "packets": {"request": requests, "reply": replies}}


def tcp_hops():
    outside = ("tcp 10.211.55.123:41001 > 10.211.55.122:8090 [S]", "tcp 10.211.55.122:8090 > 10.211.55.123:41001 [S.]")
    inside = ("tcp 10.211.55.123:41001 > 10.244.1.2:9090 [S]", "tcp 10.244.1.2:9090 > 10.211.55.123:41001 [S.]")
    return [hop(name, *(outside if index < 2 else inside)) for index, name in enumerate(HOP_NAMES)]


TCP = {
    "master": "master1", "slave": "slave", "mapping": "http-web-tcp-8090", "protocol": "tcp",
    "ok": True, "detail": "HTTP 200, 27 bytes",
    "ends": {"client": "10.211.55.123", "client_port": 41001, "address": "10.211.55.122", "port": 8090,
             "to_address": "10.244.1.2", "to_port": 9090, "netns": "ns1"},
    "hops": tcp_hops(),
    "chains": {
        "request": {"first": [{"chain": "ip nat PREROUTING", "verdict": "accept", "rule": "tcp dport 8090 dnat to 10.244.1.2:9090"},
                              {"chain": "ip filter FORWARD", "verdict": "accept", "rule": "ct state established,related accept"},
                              {"chain": "ip nat POSTROUTING", "verdict": "policy accept", "rule": None}],
                    "later": [{"chain": "ip filter FORWARD", "verdict": "accept", "rule": "ct state established,related accept"}],
                    "count": 5, "hits": {"ip nat PREROUTING": 1, "ip filter FORWARD": 5, "ip nat POSTROUTING": 1}},
        "reply": {"first": [{"chain": "ip filter FORWARD", "verdict": "accept", "rule": "ct state established,related accept"}],
                  "later": [{"chain": "ip filter FORWARD", "verdict": "accept", "rule": None}],
                  "count": 4, "hits": {"ip filter FORWARD": 4}},
    },
    "findings": [],
}


def udp_without_reply():
    """A udp flow whose request reached the namespace and whose reply nobody saw: nothing listens there."""
    flow = copy.deepcopy(TCP)
    flow.update(mapping="dns-web-udp-8053", protocol="udp", ok=False, detail="no reply within 2 s")
    flow["ends"].update(client_port=41002, port=8053, to_port=9053)
    requests = ["udp 10.211.55.123:41002 > 10.211.55.122:8053 len 18"] * 2 + ["udp 10.211.55.123:41002 > 10.244.1.2:9053 len 18"] * 2
    flow["hops"] = [hop(name, request, None, requests=1, replies=0) for name, request in zip(HOP_NAMES, requests)]
    flow["chains"]["reply"] = {"first": [], "later": [], "count": 0, "hits": {}}
    flow["findings"] = [{"hop": "ns1 veth1a", "cause": "no reply left ns1: nothing listens on udp 10.244.1.2:9053"}]
    return flow


def icmp_flow():
    flow = copy.deepcopy(TCP)
    flow.update(mapping="ping-web", protocol="icmp", detail="echo reply")
    flow["ends"].update(client_port=4242, port=None, to_port=None)
    outside = ("icmp 10.211.55.123 > 10.211.55.122 echo request id 4242", "icmp 10.211.55.122 > 10.211.55.123 echo reply id 4242")
    inside = ("icmp 10.211.55.123 > 10.244.1.2 echo request id 4242", "icmp 10.244.1.2 > 10.211.55.123 echo reply id 4242")
    flow["hops"] = [hop(name, *(outside if index < 2 else inside), requests=1, replies=1) for index, name in enumerate(HOP_NAMES)]
    return flow


def parse(svg):
    root = ET.fromstring(svg.encode("utf-8"))
    assert root.tag == SVG_NS + "svg"
    return root


def texts(element):
    """The text of each <text> under element, as a reader sees it (its tspans joined)."""
    return ["".join(text.itertext()) for text in element.iter(SVG_NS + "text")]


def by_id(root, element_id):
    found = [element for element in root.iter() if element.get("id") == element_id]
    assert len(found) == 1, f"{len(found)} elements with id {element_id}"
    return found[0]


def words(root, element_id):
    """The text of a group on one line: a packet text wrapped over two lines reads as it was."""
    return " ".join(texts(by_id(root, element_id)))


def reds(element):
    """The texts drawn in red under element."""
    return ["".join(span.itertext()) for span in element.iter() if span.get("fill") == RED and span.tag == SVG_NS + "tspan"]


def outline(root, index):
    return by_id(root, f"box-{index}").find(SVG_NS + "rect").get("stroke")


def test_the_document_is_a_standalone_svg_with_its_size_and_a_white_background():
    svg = hop_diagram(TCP)
    root = parse(svg)
    assert svg.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert 'xmlns="http://www.w3.org/2000/svg"' in svg and root.get("version") == "1.1"
    width, height = int(root.get("width")), int(root.get("height"))
    assert root.get("viewBox") == f"0 0 {width} {height}"
    background = root[0]
    assert (background.tag, background.get("fill"), background.get("width"), background.get("height")) == (
        SVG_NS + "rect", "#ffffff", str(width), str(height))
    assert "sans-serif" in root.get("font-family")


def test_the_title_names_the_mapping_the_master_the_protocol_and_the_result():
    lines = texts(parse(hop_diagram(TCP)))
    assert lines[0] == "http-web-tcp-8090 on master1, tcp"
    assert lines[1] == "probe from slave: ok: HTTP 200, 27 bytes"


def test_each_arrow_shows_the_packet_its_hop_saw_with_the_counts():
    root = parse(hop_diagram(TCP))
    for index, seen in enumerate(TCP["hops"]):
        assert words(root, f"request-{index}") == f"5 packets {seen['request']}"
        assert words(root, f"reply-{index}") == f"{seen['reply']} 4 packets"


def test_the_boxes_are_the_hops_and_the_service_in_its_namespace():
    root = parse(hop_diagram(TCP))
    assert [texts(by_id(root, f"box-{index}"))[0] for index in range(5)] == HOP_NAMES + ["service"]
    assert texts(by_id(root, "box-0"))[1] == "client 10.211.55.123"
    assert texts(by_id(root, "box-1"))[1] == "mapping 10.211.55.122:8090"
    assert texts(by_id(root, "box-4"))[1:] == ["10.244.1.2:9090", "in ns1"]


def test_the_chains_show_both_paths_with_verdicts_the_hits_and_the_rules():
    chains = texts(by_id(parse(hop_diagram(TCP)), "chains"))
    assert chains[chains.index("request, first packet:") + 1] == (
        "ip nat PREROUTING (accept) \u2192 ip filter FORWARD (accept) \u2192 ip nat POSTROUTING (policy accept)")
    assert chains[chains.index("request, later packets:") + 1] == "ip filter FORWARD (accept)"
    assert chains[chains.index("request, hits:") + 1] == (
        "5 traced packets: ip nat PREROUTING: 1 \u00b7 ip filter FORWARD: 5 \u00b7 ip nat POSTROUTING: 1")
    assert chains[chains.index("reply, hits:") + 1] == "4 traced packets: ip filter FORWARD: 4"
    assert "ip nat PREROUTING: tcp dport 8090 dnat to 10.244.1.2:9090" in chains
    # A rule met by the first and the later packets is listed once.
    assert chains.count("ip filter FORWARD: ct state established,related accept") == 2  # request and reply


def test_a_flow_that_worked_has_nothing_red_and_no_findings():
    svg = hop_diagram(TCP)
    assert RED not in svg
    assert not [element for element in parse(svg).iter() if element.get("id") == "findings"]


def test_a_reply_never_seen_is_not_seen_in_red_where_the_service_should_have_answered():
    flow = udp_without_reply()
    root = parse(hop_diagram(flow))
    assert words(root, "reply-3") == "not seen 0 packets" and reds(by_id(root, "reply-3")) == ["not seen"]
    for index in range(3):  # what follows from the stop is not seen either, but is not where it stopped
        assert words(root, f"reply-{index}") == "not seen 0 packets" and not reds(by_id(root, f"reply-{index}"))
        assert words(root, f"request-{index}") == f"1 packet {flow['hops'][index]['request']}"
    assert texts(by_id(root, "findings")) == [
        "What went wrong", "\u2022 ns1 veth1a: no reply left ns1: nothing listens on udp 10.244.1.2:9053"]
    assert reds(by_id(root, "findings")) == texts(by_id(root, "findings"))
    assert [outline(root, index) == RED for index in range(5)] == [False, False, False, True, False]


def test_a_request_that_stopped_on_the_master_is_not_seen_in_red_at_the_next_hop():
    flow = copy.deepcopy(TCP)
    flow["ok"], flow["detail"] = False, "connection timed out"
    for index, seen in enumerate(flow["hops"]):
        seen.update(request=seen["request"] if index < 2 else None, reply=None, packets={"request": 0 if index > 1 else 3, "reply": 0})
    flow["findings"] = [{"hop": "master veth1b", "cause": "veth1b is down on master1"}, {"hop": "ns1 veth1a", "cause": "second"}]
    root = parse(hop_diagram(flow))
    assert [reds(by_id(root, f"request-{index}")) for index in range(4)] == [[], [], ["not seen"], []]
    assert words(root, "request-3") == "0 packets not seen"
    assert not any(reds(by_id(root, f"reply-{index}")) for index in range(4))
    assert [outline(root, index) == RED for index in range(5)] == [False, False, True, False, False]
    assert texts(by_id(root, "findings"))[1:] == ["\u2022 master veth1b: veth1b is down on master1", "\u2022 ns1 veth1a: second"]


def test_a_finding_at_the_service_outlines_the_service():
    flow = copy.deepcopy(TCP)
    flow["ok"], flow["findings"] = False, [{"hop": "service", "cause": "the reply came back, but the check failed: HTTP 500"}]
    root = parse(hop_diagram(flow))
    assert [outline(root, index) == RED for index in range(5)] == [False, False, False, False, True]


@pytest.mark.parametrize("flow", [{}, {"hops": [], "chains": {}, "findings": []},
                                  {key: None for key in ("master", "slave", "mapping", "protocol", "ok", "detail", "ends", "hops",
                                                         "chains", "findings")}],
                         ids=["no keys", "empty", "all None"])
def test_a_flow_where_nothing_was_seen_still_renders(flow):
    root = parse(hop_diagram(flow))
    assert [texts(by_id(root, f"box-{index}"))[1] for index in range(4)] == ["not captured"] * 4
    assert all(words(root, f"{direction}-{index}") == "not captured" for direction in ("request", "reply") for index in range(4))
    chains = texts(by_id(root, "chains"))
    assert chains.count("no packet traced") == 4
    assert int(root.get("width")) > 0 and int(root.get("height")) > 0


def test_missing_hops_are_drawn_not_captured_in_their_place():
    flow = copy.deepcopy(TCP)
    flow["hops"] = [flow["hops"][0], None, flow["hops"][2]]  # the master's LAN not captured, the namespace end missing
    root = parse(hop_diagram(flow))
    assert [texts(by_id(root, f"box-{index}")) for index in range(4)] == [
        ["slave eth0", "client 10.211.55.123"], ["master1 LAN", "not captured"], ["master veth1b", "veth, host end"],
        ["ns1 veth", "not captured"]]
    assert [words(root, f"request-{index}") for index in range(4)] == [
        f"5 packets {TCP['hops'][0]['request']}", "not captured", f"5 packets {TCP['hops'][2]['request']}", "not captured"]
    assert not reds(root)  # a point without a capture is no stop


def test_special_characters_in_a_rule_or_a_cause_are_escaped():
    flow = udp_without_reply()
    rule = 'meta mark & 0x1 == 0 comment "<web> & co"'
    flow["chains"]["request"]["first"][0]["rule"] = rule
    flow["findings"][0]["cause"] = 'the "reply" <never> came & went'
    svg = hop_diagram(flow)
    assert "<web>" not in svg and "<never>" not in svg and "& " not in svg
    assert "&lt;web&gt; &amp; co" in svg and "&quot;reply&quot;" in svg
    root = parse(svg)
    assert f"ip nat PREROUTING: {rule}" in texts(by_id(root, "chains"))
    assert texts(by_id(root, "findings"))[1] == '\u2022 ns1 veth1a: the "reply" <never> came & went'


def test_control_characters_do_not_break_the_document():
    flow = copy.deepcopy(TCP)
    flow["hops"][0]["request"] = "tcp\x00 10.211.55.123:41001\x1b >\n10.211.55.122:8090"
    root = parse(hop_diagram(flow))
    assert words(root, "request-0") == "5 packets tcp 10.211.55.123:41001 > 10.211.55.122:8090"


@pytest.mark.parametrize("flow, service, mapping", [
    (TCP, "10.244.1.2:9090", "mapping 10.211.55.122:8090"),
    (udp_without_reply(), "10.244.1.2:9053", "mapping 10.211.55.122:8053"),
    (icmp_flow(), "10.244.1.2", "mapping 10.211.55.122"),
], ids=["tcp", "udp", "icmp"])
def test_tcp_udp_and_icmp_flows_render(flow, service, mapping):
    root = parse(hop_diagram(flow))
    assert texts(root)[0] == f"{flow['mapping']} on master1, {flow['protocol']}"
    assert texts(by_id(root, "box-4"))[1] == service
    assert texts(by_id(root, "box-1"))[1] == mapping
    for index, seen in enumerate(flow["hops"]):
        assert seen["request"] in words(root, f"request-{index}")


def _extent(text):
    """The estimated left, right of a <text> from its anchor, the way the module lays them out."""
    x = float(text.get("x"))
    width = text_width("".join(text.itertext()), float(text.get("font-size")), text.get("font-weight") == "bold")
    left = {"start": x, "middle": x - width / 2, "end": x - width}[text.get("text-anchor")]
    return left, left + width


@pytest.mark.parametrize("packet_text", ["tcp 10.211.55.123:41001 > 10.211.55.122:8090 [S]",
                                         "tcp " + "a-very-long-token-without-spaces" * 4 + " > " + "x " * 60])
def test_nothing_drawn_reaches_past_the_size_of_the_document(packet_text):
    flow = copy.deepcopy(TCP)
    flow["hops"][2]["request"] = packet_text
    flow["mapping"] = "a-mapping-with-a-long-name-" * 8  # the title is the widest text
    flow["chains"]["request"]["first"][0]["rule"] = "a long rule " * 30
    flow["findings"] = [{"hop": "master eth0", "cause": "a long cause " * 30}]
    root = parse(hop_diagram(flow))
    width, height = int(root.get("width")), int(root.get("height"))
    for text in root.iter(SVG_NS + "text"):
        left, right = _extent(text)
        assert 0 < left and right < width and float(text.get("y")) < height, "".join(text.itertext())
    # The long packet text stays between its boxes: the gap was made wide enough.
    box2, box3 = (by_id(root, f"box-{index}").find(SVG_NS + "rect") for index in (2, 3))
    gap = (float(box2.get("x")) + float(box2.get("width")), float(box3.get("x")))
    for text in by_id(root, "request-2").iter(SVG_NS + "text"):
        left, right = _extent(text)
        assert gap[0] < left and right < gap[1]


def test_the_text_width_estimate_grows_with_the_text():
    assert text_width("10.211.55.123:41001") > 19 * 6  # digits of DejaVu Sans are 7.6 px at 12 px
    assert text_width("ip nat PREROUTING", bold=True) > text_width("ip nat PREROUTING")
    assert text_width("") == 0

# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What playbooks/explain.yml works out between its plays, and its report.

- flows(): from each master's plan, the flows to explain (the mappings chosen), each with the slave's address
  toward the master and a source port of its own, as flow_watch takes them, and the slave's requests for those
  flows (netns.expose.flow_probe's checks);
- report(): from what the slave sent and saw (flow_probe) and what each master saw (flow_watch), one record per
  flow: the packet at each hop both ways, the chains the first and later packets crossed, the conntrack entry,
  routes, neighbours, and the findings: where a broken flow stopped, and why most likely;
- table(): the report as text, a table per mapping.

A flow's hops, in path order: the slave's interface toward the master, the master's interface the request comes in
on, the host end of the veth pair, the namespace end. A packet belongs to the request when it comes from the
client's address (the DNAT rewrites the destination only), else to the reply (an ICMP error included).
"""
from __future__ import annotations

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput, address_in

# Where the flows' source ports start by default: below Linux's ephemeral ports (32768-60999), so that no
# connection of the slave's own is likely to hold one.
FIRST_PORT = 20000
LAST_PORT = 65535


def _selected(target, mapping, selection):
    """Whether the mapping is one of selection: host ports, mapping names, service names or protocols."""
    if not selection:
        return True
    names = {str(mapping["name"]), str(target["target"]), mapping["protocol"]}
    if mapping.get("port") is not None:
        names.add(str(mapping["port"]))
    return bool(names & selection)


def _selection(chosen):
    """The mappings chosen, as given on the command line ("8090,dns") or as a list."""
    if chosen is None or chosen == "":
        return set()
    items = chosen.split(",") if isinstance(chosen, str) else chosen
    if not isinstance(items, list):
        raise InvalidInput("expose_explain_mappings", f"must be a list or a comma-separated text, not {type(chosen).__name__}")
    return {str(item).strip() for item in items if str(item).strip()}


def flows(plans, routes, first_port=FIRST_PORT, chosen=None):
    """{watch: {master: [flow_watch's flows]}, checks: [flow_probe's checks, master after master]}: each chosen
    mapping of each master's plan (plans: {master: expose_plan}), from the slave's address toward the master's
    address (routes: {address: the slave's `ip -j route get` of it}), each from its own source port, first_port
    onwards."""
    if isinstance(first_port, str) and first_port.strip().isdigit():  # as -e gives it
        first_port = int(first_port)
    if not isinstance(first_port, int) or isinstance(first_port, bool) or not 1 <= first_port <= LAST_PORT:
        raise InvalidInput("expose_explain_first_port", f"{first_port!r} is not a port from 1 to {LAST_PORT}")
    selection, found, port = _selection(chosen), set(), first_port
    watch, probes = {}, []
    for master, plan in plans.items():
        pairs = {pair["netns"]: pair for pair in plan["pairs"]}
        watch[master] = []
        for mapping, target in zip(plan["mappings"], plan["targets"]):
            if not _selected(target, mapping, selection):
                continue
            found |= selection & {str(mapping["name"]), str(target["target"]), mapping["protocol"], str(mapping.get("port"))}
            if port > LAST_PORT:
                raise InvalidInput("expose_explain_first_port", f"{first_port} leaves too few ports for the flows (up to {LAST_PORT})")
            route = routes.get(target["address"]) or {}
            if not route.get("prefsrc"):
                raise InvalidInput(f"master {master}", f"the slave has no route with a source address toward {target['address']} ({route})")
            pair = pairs[target["netns"]]
            check = {key: value for key, value in target.items() if key not in ("mapping", "netns")}
            watch[master].append({
                "name": mapping["name"], "protocol": mapping["protocol"],
                "client": route["prefsrc"], "client_port": port, "address": target["address"],
                "port": mapping.get("port"), "to_address": mapping["to_address"], "to_port": mapping.get("to_port"),
                "in_interface": mapping.get("in_interface"), "host_ifname": pair["host_ifname"],
                "netns": pair["netns"], "ns_ifname": pair["ns_ifname"],
            })
            probes.append({**check, "source_port": port})
            port += 1
    unknown = sorted(selection - found)
    if unknown:
        raise InvalidInput("expose_explain_mappings", f"{', '.join(unknown)} is no mapping, service, port or protocol of the masters")
    return {"watch": watch, "checks": probes}


def _source(packet_text):
    """The source address of a packet in tcpdump's notation ("tcp 10.0.0.1:41001 > ...")."""
    words = packet_text.split()
    return words[1].rsplit(":", 1)[0] if words[0] in ("tcp", "udp") else words[1]


def _hop(name, host, interface, packets, client):
    request = [packet for packet in packets if _source(packet["packet"]) == client]
    reply = [packet for packet in packets if _source(packet["packet"]) != client]
    return {"hop": name, "host": host, "interface": interface,
            "request": request[0]["packet"] if request else None, "reply": reply[0]["packet"] if reply else None,
            "packets": {"request": len(request), "reply": len(reply)}, "seen": packets}


def chain_type(chain, base_chains):
    """The type (nat, filter, ...) of a chain: its own if it is a base chain, else that of its table's base chains
    when they agree (iptables' nat table: its jump targets are nat chains too); None when unknown."""
    if chain in base_chains:
        return base_chains[chain]["type"]
    table = chain.rsplit(" ", 1)[0] + " "
    types = {kind["type"] for name, kind in base_chains.items() if name.startswith(table)}
    return types.pop() if len(types) == 1 else None


def _chain_steps(traced, base_chains):
    """[{chain, type, verdict, rule}] of a traced packet: the rule is the one that ended the chain, if one did."""
    if not traced:
        return []
    steps = []
    for chain in traced["chains"]:
        ending = [rule for rule, verdict in chain["rules"] if verdict != "continue"]
        steps.append({"chain": chain["chain"], "type": chain_type(chain["chain"], base_chains), "verdict": chain["verdict"],
                      "rule": ending[-1] if ending else None})
    return steps


def _chains(direction, base_chains):
    return {"first": _chain_steps(direction["first"], base_chains), "later": _chain_steps(direction["later"], base_chains),
            "count": direction["count"], "hits": direction["hits"]}


def _tuple_text(end):
    if not end:
        return "-"
    if end["protocol"] == "icmp":  # conntrack keeps the echo's identifier as the source port
        return f"icmp {end['src']} > {end['dst']} id {end['sport']}"
    source = end["src"] if end["sport"] is None else f"{end['src']}:{end['sport']}"
    destination = end["dst"] if end["dport"] is None else f"{end['dst']}:{end['dport']}"
    return f"{end['protocol']} {source} > {destination}"


def conntrack_text(entry):
    """A conntrack entry on one line, as conntrack -L shows it: both tuples, status, tcp state."""
    state = f" {entry['tcp_state']}" if entry.get("tcp_state") else ""
    return (f"{_tuple_text(entry['original'])}  reply {_tuple_text(entry['reply'])}"
            f"  [{' '.join(entry['status']) or 'UNREPLIED'}]{state}")


def _dropped_by(chains):
    """(chain, how) of the chain whose verdict dropped the first packet, or None."""
    for step in chains["first"]:
        if step["verdict"] and "drop" in step["verdict"]:
            return step["chain"], step["verdict"]
    return None


def _finding(hop, cause):
    return {"hop": hop, "cause": cause}


def _request_findings(flow, seen, master, hops):
    """Where the request stopped on its way in, and why most likely; [] when it reached the namespace."""
    slave_hop, arrival_hop, host_hop, ns_hop = hops
    ends, request = flow["ends"], flow["chains"]["request"]
    if not slave_hop["request"]:
        return [_finding(slave_hop["hop"], f"the request did not leave the slave ({flow['detail']})")]
    if not arrival_hop["request"]:
        return [_finding(arrival_hop["hop"], f"the request did not reach {master}: look at the network between the slave and "
                                             f"{ends['address']}")]
    in_interface = seen["flow"].get("in_interface")
    if in_interface and in_interface != seen["arrival"]:
        return [_finding(arrival_hop["hop"], f"the mapping {flow['mapping']} matches in_interface {in_interface}, but the "
                                             f"request comes in on {seen['arrival']} on {master}: nothing DNAT-s it "
                                             f"(set the service's in_interface, or expose_in_interface, to {seen['arrival']})")]
    dnat = [entry for entry in flow["conntrack"] if "DST_NAT" in entry["status"]]
    if flow["conntrack"] and not dnat and seen["conntrack_before"]:
        return [_finding(arrival_hop["hop"], f"a conntrack entry from before the mapping holds the flow on {master}, without "
                                             f"DNAT: {conntrack_text(flow['conntrack'][0])}")]
    if flow["conntrack"] and not dnat:
        return [_finding(arrival_hop["hop"], f"{master} did not DNAT the request to {ends['to_address']}: is the mapping "
                                             f"{flow['mapping']} there? (nft list ruleset | grep {flow['mapping']})")]
    if seen["ip_forward"] != 1:
        return [_finding(arrival_hop["hop"], f"ip_forward is {seen['ip_forward']} on {master}: the DNAT-ed request is not "
                                             f"forwarded to {host_hop['interface']} (sysctl -w net.ipv4.ip_forward=1, or run "
                                             "the expose role again, which sets it)")]
    host_link = seen["links"].get(host_hop["interface"]) or {}
    if not host_link.get("up", True) or host_link.get("error"):
        return [_finding(host_hop["hop"], f"{host_hop['interface']} is down on {master}: the DNAT-ed request cannot leave "
                                          f"toward {ends['netns']} ({host_link.get('error') or 'ip link set ' + host_hop['interface'] + ' up'})")]
    ns_link = seen["links"].get(ns_hop["interface"]) or {}
    if not ns_link.get("up", True) or ns_link.get("error"):
        return [_finding(ns_hop["hop"], f"{ns_hop['interface']} is down in {ends['netns']} on {master}: the pair carries "
                                        f"nothing ({ns_link.get('error') or 'ip -n ' + ends['netns'] + ' link set ' + ns_hop['interface'] + ' up'})")]
    dropped = _dropped_by(request)
    if not host_hop["request"] and dropped:
        chain, how = dropped
        return [_finding(arrival_hop["hop"], f"{chain} {how} and no accept for this flow on {master}: the request is dropped "
                                             f"before {host_hop['interface']}")]
    if "error" in seen["route"]:
        return [_finding(arrival_hop["hop"], f"{master} has no route for the DNAT-ed request: {seen['route']['error']}")]
    if not host_hop["request"]:
        return [_finding(arrival_hop["hop"], f"the request is dropped on {master} between {seen['arrival']} and "
                                             f"{host_hop['interface']} by nothing the trace shows (an iptables-legacy rule? "
                                             "iptables-legacy-save)")]
    if not ns_hop["request"]:
        return [_finding(ns_hop["hop"], f"the request left {host_hop['interface']} on {master} but did not arrive at "
                                        f"{ns_hop['interface']} in {ends['netns']}")]
    return []


def _reply_findings(flow, seen, master, hops):
    """Where the reply stopped on its way out, or what the service answered instead; [] when it reached the slave."""
    slave_hop, arrival_hop, host_hop, ns_hop = hops
    ends = flow["ends"]
    service = f"{flow['protocol']} {ends['to_port']}" if ends.get("to_port") else flow["protocol"]
    reply = ns_hop["reply"] or ""
    if "[R" in reply or "unreachable" in reply:
        return [_finding(ns_hop["hop"], f"nothing listens on {service} in {ends['netns']} on {master}: it answered "
                                        f"{reply!r}")]
    if not ns_hop["reply"]:
        if "error" in seen["return_route"]:
            return [_finding(ns_hop["hop"], f"{ends['netns']} has no route back to {ends['client']} on {master}: "
                                            f"{seen['return_route']['error']} (no default route via the host end "
                                            f"{host_hop['interface']}?)")]
        return [_finding(ns_hop["hop"], f"the service in {ends['netns']} did not answer on {service} ({flow['detail']})")]
    if not host_hop["reply"]:
        return [_finding(host_hop["hop"], f"the reply left {ns_hop['interface']} but did not reach {host_hop['interface']}")]
    if not arrival_hop["reply"]:
        dropped = _dropped_by(flow["chains"]["reply"])
        why = f"{dropped[0]} {dropped[1]} for the reply" if dropped else "the reply is dropped"
        return [_finding(host_hop["hop"], f"{why} on {master}: it did not leave {seen['arrival']}")]
    if not slave_hop["reply"]:
        return [_finding(slave_hop["hop"], f"the reply left {master}'s {seen['arrival']} but did not reach the slave")]
    return []


def _stale_findings(flow, master):
    stale = flow["stale"]
    if not stale:
        return []
    ends = flow["ends"]
    port = f" --orig-port-dst {ends['port']}" if ends.get("port") else ""
    return [_finding(f"master {flow['arrival']}",
                     f"{len(stale)} conntrack entr{'y' if len(stale) == 1 else 'ies'} of other clients' flows to "
                     f"{ends['address']}{':' + str(ends['port']) if ends.get('port') else ''} on {master} "
                     f"{'does' if len(stale) == 1 else 'do'} not reach "
                     f"{ends['to_address']} (from before the mapping, or before it changed), such as "
                     f"{conntrack_text(stale[0])}; delete them: conntrack -D -p {flow['protocol']}{port}")]


def _denied_findings(flow, master, hops, allowed):
    """Why the request of a client outside the mapping's allowed_sources stopped (or that it was not stopped)."""
    client = flow["ends"]["client"]
    if allowed is None or address_in(client, allowed):
        return None
    _slave_hop, arrival_hop, host_hop, ns_hop = hops
    if not arrival_hop["request"]:
        return None  # it did not reach the master: not the list's doing
    why = f"source {client} is not in {flow['service']}'s allowed_sources"
    if ns_hop["request"] or host_hop["request"]:
        return [_finding(host_hop["hop"], f"{why}, yet the request reached {host_hop['interface']} on {master}: the list is "
                                          f"not enforced (is mapping {flow['mapping']} as declared? run the expose role again)")]
    return [_finding(arrival_hop["hop"], f"{why}, dropped at {arrival_hop['hop']} (denied as declared)")]


def _flow_record(master, slave, planned, sent, seen_flow, seen, allowed=None):  # pylint: disable=too-many-arguments
    ends = seen_flow["flow"]
    hops_seen = {}
    for packet in seen_flow["hops"]:
        hops_seen.setdefault(packet["hop"], []).append(packet)
    hops = [
        _hop(f"slave {sent['interface']}", slave, sent["interface"], sent["hops"], ends["client"]),
        _hop(f"master {seen_flow['arrival']}", master, seen_flow["arrival"], hops_seen.get(f"master {seen_flow['arrival']}", []),
             ends["client"]),
        _hop(f"master {ends['host_ifname']}", master, ends["host_ifname"], hops_seen.get(f"master {ends['host_ifname']}", []),
             ends["client"]),
        _hop(f"{ends['netns']} {ends['ns_ifname']}", master, ends["ns_ifname"],
             hops_seen.get(f"{ends['netns']} {ends['ns_ifname']}", []), ends["client"]),
    ]
    flow = {
        "master": master, "slave": slave, "mapping": planned["name"], "service": sent["target"],
        "protocol": planned["protocol"], "ok": sent["ok"], "detail": sent["detail"],
        "answer": sent.get("body") or sent.get("reply"), "latency_ms": sent.get("latency_ms"),
        "ends": ends, "arrival": seen_flow["arrival"], "hops": hops,
        "chains": {direction: _chains(seen_flow["chains"][direction], seen.get("base_chains", {}))
                   for direction in ("request", "reply")},
        "conntrack": seen_flow["conntrack"], "stale": seen_flow["stale"], "elements": seen_flow["elements"],
        "route": seen_flow["route"], "return_route": seen_flow["return_route"], "links": seen_flow["links"],
        "ip_forward": seen["ip_forward"],
    }
    view = {**seen_flow, "ip_forward": seen["ip_forward"]}
    denied = _denied_findings(flow, master, hops, allowed)
    if denied is not None:
        flow["findings"] = denied + _stale_findings(flow, master)
        return flow
    found = _request_findings(flow, view, master, hops)
    if not found and not sent["ok"]:
        found = _reply_findings(flow, view, master, hops)
    if not found and not sent["ok"]:
        found = [_finding("service", f"the reply came back, but the check failed: {sent['detail']}")]
    flow["findings"] = found + _stale_findings(flow, master)
    return flow


def report(planned, seen_by_master, sent, slave, run_id=None):
    """The report of a run: {run_id, flows: [one record per flow], masters: {master: {ip_forward, neighbours, error}},
    slave: {name, neighbours}}.

    planned: flows(); seen_by_master: {master: flow_watch's result}; sent: flow_probe's result, whose results are
    in the order of planned's checks."""
    results, checks = iter(sent["results"]), iter(planned.get("checks", []))
    records, masters = [], {}
    for master, master_flows in planned["watch"].items():
        seen = seen_by_master[master]
        by_port = {item["flow"]["client_port"]: item for item in seen.get("flows", [])}
        masters[master] = {"ip_forward": seen.get("ip_forward"), "neighbours": seen.get("neighbours", {}),
                           "error": seen.get("msg") if seen.get("failed") else None}
        for flow in master_flows:
            result = next(results)
            allowed = next(checks, {}).get("allowed_sources")
            seen_flow = by_port.get(flow["client_port"])
            if seen_flow is None:
                records.append({"master": master, "slave": slave, "mapping": flow["name"], "service": result["target"],
                                "protocol": flow["protocol"], "ok": result["ok"], "detail": result["detail"],
                                "hops": [], "chains": {}, "findings": [_finding(
                                    f"master {master}", f"the master's watch failed: {seen.get('msg', 'no report')}")]})
                continue
            records.append(_flow_record(master, slave, flow, result, seen_flow, seen, allowed))
    return {"run_id": run_id, "flows": records, "masters": masters,
            "slave": {"name": slave, "neighbours": sent.get("neighbours", [])}}


def _route_text(route):
    if "error" in route:
        return f"refused: {route['error']}"
    via = f" via {route['gateway']}" if route.get("gateway") else ""
    return f"dev {route.get('dev')}{via}" + (f" src {route['prefsrc']}" if route.get("prefsrc") else "")


def _path_text(steps):
    if not steps:
        return "-"
    return " -> ".join(f"{step['chain']}" + (f" [{step['type']}]" if step["type"] else "") + f" ({step['verdict'] or 'continue'})"
                       for step in steps)


def _packets(count):
    return f"{count} packet" + ("" if count == 1 else "s")


def flow_table(flow):
    """One mapping's table: the packet at each hop both ways, the chains, conntrack, routes and the findings."""
    result = "ok" if flow["ok"] else "FAILED"
    lines = [f"== {flow['master']} {flow['mapping']} ({flow['protocol']}): {result}, {flow['detail']}"]
    if flow["hops"]:
        width = max(len(hop["hop"]) for hop in flow["hops"])
        column = max([len(hop["request"] or "") for hop in flow["hops"]] + [len("request (first packet)")])
        lines.append(f"  {'hop':<{width}}  {'request (first packet)':<{column}}  reply (first packet)")
        for hop in flow["hops"]:
            counts = hop["packets"]
            lines.append(f"  {hop['hop']:<{width}}  {hop['request'] or 'not seen':<{column}}  {hop['reply'] or 'not seen'}"
                         f"  ({counts['request']} in, {counts['reply']} back)")
    for direction in ("request", "reply"):
        chains = flow["chains"].get(direction)
        if chains:
            lines.append(f"  {direction} chains, first packet:  {_path_text(chains['first'])}")
            hits = "".join(f"; {chain} {count}" for chain, count in chains["hits"].items())
            lines.append(f"  {direction} chains, later packets: {_path_text(chains['later'])}  ({_packets(chains['count'])} traced{hits})")
    for element in flow.get("elements", []):
        counted = "" if element["packets"] is None else f" ({_packets(element['run_packets'])} in this run, {element['packets']} in all)"
        lines.append(f"  map element: {element['set']} {element['element']}{counted}")
    for entry in flow.get("conntrack", []):
        lines.append(f"  conntrack: {conntrack_text(entry)}")
    if "route" in flow:
        lines.append(f"  route of the DNAT-ed request: {_route_text(flow['route'])}; "
                     f"back from {flow['ends']['netns']}: {_route_text(flow['return_route'])}; ip_forward {flow['ip_forward']}")
    lines += [f"  FINDING at {finding['hop']}: {finding['cause']}" for finding in flow["findings"]]
    return "\n".join(lines)


def _neighbour_lines(name, entries):
    return [f"  {name}: " + (", ".join(f"{entry['address']} {entry['mac'] or '-'} {entry['dev']} {entry['state']}"
                                       for entry in entries) or "none")]


def table(explained):
    """The whole report as text: a table per mapping, then the neighbour (ARP) entries of each side."""
    parts = [flow_table(flow) for flow in explained["flows"]]
    lines = ["== neighbour (ARP) entries"]
    lines += _neighbour_lines(f"{explained['slave']['name']} (the slave)", explained["slave"]["neighbours"])
    for master, seen in explained["masters"].items():
        for where, entries in seen["neighbours"].items():
            lines += _neighbour_lines(f"{master} (the master)" if where == "master" else f"{master}'s {where}", entries)
    return "\n\n".join(parts + ["\n".join(lines)])

# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The picture of one flow of playbooks/explain.yml: hop_diagram(flow) -> a standalone SVG 1.1 document.

Left to right: the slave, the master's LAN interface, the host end of the veth pair, the namespace end and
the service. Between two boxes, the request (top, to the right) and the reply (bottom, to the left), each
with the packet as the capture point it leaves from / arrives at saw it and the packet counts; a red
"not seen" where the flow stopped. Under the master's boxes, the nftables chains the first and the later
packets crossed, with their verdicts and hits; at the bottom, the findings in red.

flow: explain's report of one mapping (one of the flows of plugin_utils/_explain.py's report()); any part
of it may be missing or None. hops[i] is the i-th capture point in path order (slave, master LAN, veth host
end, namespace end); a missing or None entry is drawn greyed as "not captured".
Standard library only: the playbook writes the SVG on the controller, rsvg-convert makes the PNG of it.
"""
from __future__ import annotations

import contextlib
import textwrap
from xml.sax.saxutils import escape, quoteattr

FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"
SIZE = 12  # px, most text
LINE = 16  # px from one line of text to the next
MARGIN = 20
PAD = 12  # px between text and the edge of its box or gap
BOX_MIN_WIDTH = 130
GAP_MIN_WIDTH = 110
PACKET_WRAP = 34  # characters: a longer packet text goes on several lines, so that the gaps stay narrow
TEXT_WRAP = 110  # characters: rules, chain paths and findings

INK, GREY, FAINT = "#222222", "#6b6b6b", "#b5b5b5"
RED = "#c62828"
REQUEST_COLOR, REPLY_COLOR = "#1565c0", "#2e7d32"
BOX_FILL, BOX_STROKE, SERVICE_FILL, MISSING_FILL = "#eef4fb", "#4a6785", "#fff8e1", "#f3f3f3"

CAPTURE_ROLES = ("slave", "LAN", "veth, host end", "veth, namespace end")
DIRECTIONS = ("request", "reply")

# Estimated widths, in em, of DejaVu Sans (sans-serif on Debian) glyphs: a little more than the widest glyph
# of each group, so that an estimate is never short and no text runs out of its box or off the picture.
NARROW = frozenset(" !'(),-./:;I[\\]fijlrt|")
WIDE = frozenset("#%&+<=>@MWmw~^")
BOLD_FACTOR = 1.15


def _glyph_em(char):
    if char in NARROW:
        return 0.44
    if char in WIDE or not char.isascii():
        return 1.0
    return 0.8 if char.isupper() else 0.66


def text_width(text, size=SIZE, bold=False):
    """The estimated width in px of text in FONT."""
    return sum(_glyph_em(char) for char in text) * size * (BOLD_FACTOR if bold else 1.0)


def _one_line(text):
    """text on one line, with only characters XML 1.0 allows (no control characters); edges kept."""
    return "".join(" " if char.isspace() else char for char in str(text) if char >= " " or char.isspace())


def _clean(value):
    """A value of the flow as text on one line: _one_line, without spaces at its ends or in a row."""
    return " ".join(_one_line(value).split())


def _get(data, *keys):
    """data[key][key]..., None where a level is missing or is not a dict."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _endpoint(address, port):
    if address is None:
        return "unknown address"
    return f"{address}:{port}" if port is not None else str(address)


def _plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


class Svg:
    """The elements of the picture, and how far right and down they reach: the document's size."""

    def __init__(self):
        self.elements = []
        self.right = self.bottom = 0.0

    def _reach(self, right, bottom):
        self.right, self.bottom = max(self.right, right), max(self.bottom, bottom)

    @contextlib.contextmanager
    def group(self, element_id):
        """Elements in a <g> with an id: what the tests (and a reader of the SVG) find a hop's labels by."""
        self.elements.append(f"<g id={quoteattr(element_id)}>")
        yield
        self.elements.append("</g>")

    def rect(self, x, y, width, height, fill, stroke, stroke_width=1, dashed=False):
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        self.elements.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" rx="6" '
                             f'fill="{fill}" stroke="{stroke}" stroke-width="{stroke_width}"{dash}/>')
        self._reach(x + width + stroke_width, y + height + stroke_width)

    def line(self, x1, y1, x2, y2, color, width=1.5, dashed=False):
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        self.elements.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                             f'stroke="{color}" stroke-width="{width}"{dash}/>')
        self._reach(max(x1, x2), max(y1, y2))

    def arrow(self, start, end, y, color, dashed=False):
        """A horizontal arrow from x=start to x=end, its head at end (drawn as a polygon: no markers needed)."""
        head = 9 if end > start else -9
        self.line(start, y, end - head, y, color, width=2, dashed=dashed)
        self.elements.append(f'<polygon points="{end:.1f},{y:.1f} {end - head:.1f},{y - 5:.1f} '
                             f'{end - head:.1f},{y + 5:.1f}" fill="{color}"/>')

    def text(self, x, y, runs, size=SIZE, bold=False, anchor="start"):
        """Text at baseline y; runs: a str, or (text, color) pairs drawn one after the other. Returns its width."""
        if isinstance(runs, str):
            runs = [(runs, INK)]
        runs = [(_one_line(text), color) for text, color in runs]
        width = sum(text_width(text, size, bold) for text, _color in runs)
        style = ' font-weight="bold"' if bold else ""
        spans = "".join(f'<tspan fill="{color}">{escape(text, {chr(34): "&quot;"})}</tspan>' for text, color in runs)
        self.elements.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{style} '
                             f'xml:space="preserve">{spans}</text>')
        left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        self._reach(left + width, y + size * 0.3)
        return width

    def document(self):
        width, height = int(self.right + MARGIN + 1), int(self.bottom + MARGIN + 1)
        return "\n".join([
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family={quoteattr(FONT)} font-size="{SIZE}">',
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
            *self.elements,
            "</svg>",
            "",
        ])


def _capture_points(flow):
    """The four capture points: (name, the hop's dict or None when it was not captured)."""
    hops = flow.get("hops") or []
    master, netns = flow.get("master") or "master", _get(flow, "ends", "netns") or "namespace"
    defaults = (flow.get("slave") or "slave", f"{master} LAN", f"{master} veth", f"{netns} veth")
    points = []
    for index, default in enumerate(defaults):
        hop = hops[index] if index < len(hops) and isinstance(hops[index], dict) else None
        named = hop and (hop.get("hop") or " ".join(str(hop[key]) for key in ("host", "interface") if hop.get(key)))
        points.append((_clean(named or default), hop))
    return points


def _marks(points):
    """{(direction, index): mark} of each capture point: "seen", "stopped" (the first one that missed the
    packet after an earlier one saw it: where the flow stopped), "not seen" or "not captured". Earlier
    follows the packets: the request from the slave to the namespace, then the reply back."""
    journey = [("request", index) for index in range(len(points))]
    journey += [("reply", index) for index in reversed(range(len(points)))]
    marks, seen_before, stopped = {}, False, False
    for direction, index in journey:
        hop = points[index][1]
        if hop is None:
            marks[direction, index] = "not captured"
        elif hop.get(direction):
            marks[direction, index], seen_before = "seen", True
        elif seen_before and not stopped:
            marks[direction, index], stopped = "stopped", True
        else:
            marks[direction, index] = "not seen"
    return marks


def _packet_label(hop, direction, mark):
    """The lines of text on an arrow, [(text, color)]: the packet's text, and the packet count away from the arrow."""
    count = _get(hop, "packets", direction)
    counts = [(_plural(count, "packet"), GREY)] if isinstance(count, int) else []
    lines = []
    if mark == "seen":
        text = _clean(hop[direction])
        # Break after the ">" first: source and destination then each get a line.
        parts = text.split(" > ")
        pieces = [part + (" >" if index < len(parts) - 1 else "") for index, part in enumerate(parts)]
        lines += [(piece, INK) for part in pieces for piece in textwrap.wrap(part, PACKET_WRAP)]
    else:
        lines.append(("not captured" if mark == "not captured" else "not seen", RED if mark == "stopped" else FAINT))
    return counts + lines if direction == "request" else lines + counts


def _box_lines(flow, name, hop, index):
    """[(text, color, bold)] of a capture point's box."""
    if hop is None:
        return [(name, FAINT, True), ("not captured", FAINT, False)]
    ends = flow.get("ends") or {}
    details = {0: f"client {ends.get('client')}" if ends.get("client") else "client",
               1: f"mapping {_endpoint(ends.get('address'), ends.get('port'))}" if ends.get("address") else "LAN"}
    return [(name, INK, True), (details.get(index, CAPTURE_ROLES[index]), GREY, False)]


def _chain_path(entries):
    """The lines of runs of a chain path: each chain, its type (nat chains are where the DNAT is decided) and its
    verdict, joined with arrows."""
    if not entries:
        return [[("no packet traced", FAINT)]]
    lines, line, length = [], [], 0
    for entry in entries:
        chain, verdict = _clean(_get(entry, "chain") or "unknown chain"), _get(entry, "verdict")
        kind = _get(entry, "type")
        runs = ([(chain, INK)] + ([(f" [{_clean(kind)}]", GREY)] if kind else [])
                + ([(f" ({_clean(verdict)})", _verdict_color(verdict))] if verdict else []))
        size = sum(len(text) for text, _color in runs)
        if line and length + size > TEXT_WRAP:
            lines.append(line)
            line, length = [], 0
        if line:
            line.append((" \u2192 ", GREY))
        line += runs
        length += size + 3
    return lines + [line]


def _verdict_color(verdict):
    verdict = str(verdict)
    if "drop" in verdict or "reject" in verdict:
        return RED
    return REPLY_COLOR if "accept" in verdict else GREY


def _draw_title(svg, flow):
    title = f"{flow.get('mapping') or 'unknown mapping'} on {flow.get('master') or 'unknown master'}"
    svg.text(MARGIN, MARGIN + 16, title + f", {flow.get('protocol') or 'unknown protocol'}", size=16, bold=True)
    result = {True: ("ok", REPLY_COLOR), False: ("failed", RED)}.get(flow.get("ok"), ("no result", GREY))
    detail = [(f": {_clean(flow['detail'])}", INK)] if flow.get("detail") else []
    svg.text(MARGIN, MARGIN + 40, [(f"probe from {flow.get('slave') or 'the slave'}: ", GREY), result, *detail], size=13)
    return MARGIN + 60


def _draw_hops(svg, flow, top):
    """The five boxes and the arrows between them; returns the boxes' (left, right) and their bottom."""
    points = _capture_points(flow)
    marks = _marks(points)
    ends = flow.get("ends") or {}
    boxes = [_box_lines(flow, name, hop, index) for index, (name, hop) in enumerate(points)]
    boxes.append([("service", INK, True), (_endpoint(ends.get("to_address"), ends.get("to_port")), INK, False)]
                 + ([(f"in {_clean(ends['netns'])}", GREY, False)] if ends.get("netns") else []))
    labels = [{direction: _packet_label(hop, direction, marks[direction, index]) for direction in DIRECTIONS}
              for index, (_name, hop) in enumerate(points)]

    # Widths from the content: each box fits its lines, each gap its widest arrow label.
    box_widths = [max([BOX_MIN_WIDTH] + [text_width(text, bold=bold) + 2 * PAD for text, _color, bold in lines])
                  for lines in boxes]
    gap_widths = [max([GAP_MIN_WIDTH] + [text_width(text) + 2 * PAD for lines in label.values() for text, _color in lines])
                  for label in labels]
    # Heights: the request's labels stand above its arrow, the reply's hang below its arrow.
    above = max(len(label["request"]) for label in labels) * LINE
    below = max(len(label["reply"]) for label in labels) * LINE
    request_y = top + 8 + above + 6
    reply_y = request_y + 30
    bottom = reply_y + 10 + below + 4

    stopped_at = _first_finding_hop(flow)
    spans, x = [], MARGIN
    for index, lines in enumerate(boxes):
        missing = index < len(points) and points[index][1] is None
        is_stop = lines[0][0] == stopped_at
        with svg.group(f"box-{index}"):
            svg.rect(x, top, box_widths[index], bottom - top, MISSING_FILL if missing else SERVICE_FILL if index == 4 else BOX_FILL,
                     RED if is_stop else FAINT if missing else BOX_STROKE, stroke_width=3 if is_stop else 1, dashed=missing)
            first = (top + bottom) / 2 - len(lines) * LINE / 2 + SIZE
            for number, (text, color, bold) in enumerate(lines):
                svg.text(x + box_widths[index] / 2, first + number * LINE, [(text, color)], bold=bold, anchor="middle")
        spans.append((x, x + box_widths[index]))
        x += box_widths[index] + (gap_widths[index] if index < len(gap_widths) else 0)

    for index, label in enumerate(labels):
        left, right = spans[index][1] + 3, spans[index + 1][0] - 3
        middle = (left + right) / 2
        for direction, y, color in (("request", request_y, REQUEST_COLOR), ("reply", reply_y, REPLY_COLOR)):
            mark = marks[direction, index]
            with svg.group(f"{direction}-{index}"):
                start, end = (left, right) if direction == "request" else (right, left)
                svg.arrow(start, end, y, {"seen": color, "stopped": RED}.get(mark, FAINT), dashed=mark != "seen")
                lines = label[direction]
                first = y - 7 - (len(lines) - 1) * LINE if direction == "request" else y + 7 + SIZE
                for number, run in enumerate(lines):
                    svg.text(middle, first + number * LINE, [run], bold=run[0] == "not seen" and run[1] == RED,
                             anchor="middle")
    return spans, bottom


def _first_finding_hop(flow):
    findings = flow.get("findings") or []
    return _clean(_get(findings[0], "hop") or "") if findings else None


def _draw_hosts(svg, flow, spans, top):
    """Brackets under the boxes: which machine (and which namespace) each box is in."""
    netns = _get(flow, "ends", "netns")
    brackets = [(0, 3, 4, f"netns {netns}" if netns else "namespace"),
                (1, 0, 0, flow.get("slave") or "slave"), (1, 1, 4, flow.get("master") or "master")]
    for level, first, last, name in brackets:
        y = top + 10 + level * 30
        left, right = spans[first][0] + 4, spans[last][1] - 4
        svg.line(left, y, right, y, FAINT, width=1)
        svg.line(left, y - 5, left, y, FAINT, width=1)
        svg.line(right, y - 5, right, y, FAINT, width=1)
        svg.text((left + right) / 2, y + 14, [(_clean(name), GREY)], bold=level == 1, anchor="middle")
    return top + 10 + 30 + 24


def _draw_chains(svg, flow, left, top):
    """Per direction: the chain paths of the first and the later packets, the hits per chain, the rules."""
    y = top + 16
    svg.text(left, y, f"nftables trace on {flow.get('master') or 'the master'}", size=13, bold=True)
    heads = {"first": "first packet", "later": "later packets", "hits": "hits", "rules": "rules"}
    column = left + max(text_width(f"{direction}, {head}:") for direction in DIRECTIONS for head in heads.values()) + 10
    with svg.group("chains"):
        for direction in DIRECTIONS:
            trace = _get(flow, "chains", direction)
            trace = trace if isinstance(trace, dict) else {}
            rows = [("first", _chain_path(trace.get("first"))), ("later", _chain_path(trace.get("later")))]
            hits = trace.get("hits") if isinstance(trace.get("hits"), dict) else {}
            count = trace.get("count")
            hits_runs = [(f"{_plural(count, 'traced packet')}: " if isinstance(count, int) else "", GREY)]
            hits_runs += [(" \u00b7 ".join(f"{_clean(chain)}: {hit}" for chain, hit in hits.items()) or "none", INK)]
            rows.append(("hits", [hits_runs]))
            # Each rule once, though the first and the later packets often meet the same ones.
            rules = dict.fromkeys(f"{_clean(entry.get('chain') or 'unknown chain')}: {_clean(entry['rule'])}"
                                  for entry in (trace.get("first") or []) + (trace.get("later") or []) if _get(entry, "rule"))
            rule_lines = [[(line, GREY)] for rule in rules for line in textwrap.wrap(rule, TEXT_WRAP, subsequent_indent="    ")]
            if rule_lines:
                rows.append(("rules", rule_lines))
            y += 8
            for head, lines in rows:
                y += LINE + 2
                svg.text(left, y, [(f"{direction}, {heads[head]}:", GREY)])
                for number, runs in enumerate(lines):
                    svg.text(column, y + number * LINE, runs)
                y += (len(lines) - 1) * LINE
    return y + 10


def _draw_findings(svg, flow, top):
    findings = flow.get("findings") or []
    if not findings:
        return top
    y = top + 24
    with svg.group("findings"):
        svg.text(MARGIN, y, [("What went wrong", RED)], size=13, bold=True)
        for finding in findings:
            text = f"{_clean(_get(finding, 'hop') or 'unknown hop')}: {_clean(_get(finding, 'cause') or 'unknown cause')}"
            for number, line in enumerate(textwrap.wrap(text, TEXT_WRAP, subsequent_indent="    ")):
                y += LINE + (4 if number == 0 else 0)
                svg.text(MARGIN, y, [(("\u2022 " if number == 0 else "") + line, RED)])
    return y


def hop_diagram(flow):
    """The SVG document (str) of one explained flow: its hops, its chains on the master, its findings."""
    flow = flow if isinstance(flow, dict) else {}
    svg = Svg()
    top = _draw_title(svg, flow)
    spans, bottom = _draw_hops(svg, flow, top)
    bottom = _draw_hosts(svg, flow, spans, bottom)
    bottom = _draw_chains(svg, flow, spans[1][0], bottom)
    _draw_findings(svg, flow, bottom)
    return svg.document()

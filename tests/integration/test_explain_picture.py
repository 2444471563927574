"""The picture of an explained flow (plugin_utils/_explain_svg.py) drawn for real: by a headless Chromium, as a
browser shows the SVG that explain.yml writes, and by rsvg-convert, as the playbook makes the PNG next to it.

- Chromium parses the document (--dump-dom: the <svg> root and the flow's texts, no parsererror);
- its screenshot has the window's size (the SVG's), is not blank, and has red in it when, and only when, the
  flow has findings;
- laid out by Chromium's own fonts, no text leaves the picture or its box, and no two texts overlap: the
  module's estimate of text widths is not short;
- rsvg-convert -f png makes a PNG of the SVG's width and height, not blank either.

The Chromium tests are tier two (marked `full`: `bash hack/test.sh --full`, whose bootstrap installs Chromium);
the PNG decoder and rsvg-convert's PNG are tier one.

No lab. Chromium runs in a network namespace of its own (unshare --net: it can send nothing past its loopback),
with its profile, cache and temporary files under tmp_path; no process of it outlives a run.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
import zlib

import pytest

from ansible_collections.netns.expose.plugins.plugin_utils._explain_svg import hop_diagram

TIMEOUT = 60  # seconds for one Chromium run
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
    # Nothing of what a browser fetches by itself: updates, sync, pings, safe browsing, metrics, name lookups.
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--no-pings",
    "--disable-breakpad", "--metrics-recording-only", "--host-resolver-rules=MAP * ~NOTFOUND",
]
RED = (150, 90, 90)  # a pixel is red with at least this much red and at most this much green and blue


def hop(name, request, reply, requests, replies):
    host = "slave" if name.startswith("slave") else "master1"
    return {"hop": name, "host": host, "interface": name.split()[1], "request": request, "reply": reply,
            "packets": {"request": requests, "reply": replies}}


HOP_NAMES = ("slave eth0", "master eth0", "master veth1b", "ns1 veth1a")
TCP = {
    "master": "master1", "slave": "slave", "mapping": "http-web-tcp-8090", "protocol": "tcp",
    "ok": True, "detail": "HTTP 200, 27 bytes",
    "ends": {"client": "10.211.55.123", "client_port": 41001, "address": "10.211.55.122", "port": 8090,
             "to_address": "10.244.1.2", "to_port": 9090, "netns": "ns1"},
    "hops": [hop(name, f"tcp 10.211.55.123:41001 > {to} [S]", f"tcp {to} > 10.211.55.123:41001 [S.]", 5, 4)
             for name, to in zip(HOP_NAMES, ["10.211.55.122:8090"] * 2 + ["10.244.1.2:9090"] * 2)],
    "chains": {
        "request": {"first": [{"chain": "ip nat PREROUTING", "verdict": "accept", "rule": 'iifname "eth0" tcp dport 8090 dnat to 10.244.1.2:9090'},
                              {"chain": "ip filter FORWARD", "verdict": "accept", "rule": 'oifname "veth1b" ip daddr 10.244.1.2 accept'},
                              {"chain": "ip nat POSTROUTING", "verdict": "policy accept", "rule": None}],
                    "later": [{"chain": "ip filter FORWARD", "verdict": "accept", "rule": "ct state established,related accept"}],
                    "count": 5, "hits": {"ip nat PREROUTING": 1, "ip filter FORWARD": 5, "ip nat POSTROUTING": 1}},
        "reply": {"first": [{"chain": "ip filter FORWARD", "verdict": "accept", "rule": "ct state established,related accept"}],
                  "later": [{"chain": "ip filter FORWARD", "verdict": "accept", "rule": "ct state established,related accept"}],
                  "count": 4, "hits": {"ip filter FORWARD": 4}},
    },
    "findings": [],
}
UDP = {
    "master": "master1", "slave": "slave", "mapping": "dns-web-udp-8053", "protocol": "udp",
    "ok": False, "detail": "no reply within 2 s",
    "ends": {"client": "10.211.55.123", "client_port": 41002, "address": "10.211.55.122", "port": 8053,
             "to_address": "10.244.1.2", "to_port": 9053, "netns": "ns1"},
    "hops": [hop(name, f"udp 10.211.55.123:41002 > {to} len 18", None, 1, 0)
             for name, to in zip(HOP_NAMES, ["10.211.55.122:8053"] * 2 + ["10.244.1.2:9053"] * 2)],
    "chains": {
        "request": {"first": [{"chain": "ip nat PREROUTING", "verdict": "accept", "rule": 'iifname "eth0" udp dport 8053 dnat to 10.244.1.2:9053'},
                              {"chain": "ip filter FORWARD", "verdict": "accept", "rule": None}],
                    "later": [], "count": 1, "hits": {"ip nat PREROUTING": 1, "ip filter FORWARD": 1}},
        "reply": {"first": [], "later": [], "count": 0, "hits": {}},
    },
    "findings": [{"hop": "ns1 veth1a", "cause": "the request reached ns1 but no reply left it: nothing listens on udp 10.244.1.2:9053"}],
}
FLOWS = pytest.mark.parametrize("flow", [TCP, UDP], ids=["tcp-working", "udp-no-reply"])


def decode_png(data):
    """(width, height, rows of (r, g, b) tuples) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks = 8, {}
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunks.setdefault(kind, []).append(data[position + 8:position + 8 + length])
        position += 12 + length
    width, height, depth, color, _compression, _filter, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert depth == 8 and color in (2, 6) and interlace == 0, f"depth {depth}, color type {color}, interlace {interlace}"
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(b"".join(chunks[b"IDAT"])), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        unfilter(kind, row, previous, channels)
        rows.append([tuple(row[x:x + 3]) for x in range(0, stride, channels)])
        previous = row
    return width, height, rows


def unfilter(kind, row, previous, channels):
    """Undoes in place the filter of one row (filter types 0-4 of the PNG specification)."""
    if kind == 0:
        return
    if kind == 2:  # up: the common case, done without the per-byte loop
        row[:] = bytes((value + above) & 0xFF for value, above in zip(row, previous))
        return
    assert kind in (1, 3, 4), f"unknown PNG filter type {kind}"
    for x, value in enumerate(row):
        left = row[x - channels] if x >= channels else 0
        above = previous[x]
        if kind == 1:
            predictor = left
        elif kind == 3:
            predictor = (left + above) // 2
        else:
            upper_left = previous[x - channels] if x >= channels else 0
            estimate = left + above - upper_left
            distances = (abs(estimate - left), abs(estimate - above), abs(estimate - upper_left))
            predictor = (left, above, upper_left)[distances.index(min(distances))]
        row[x] = (value + predictor) & 0xFF


def test_the_png_decoder_reads_each_filter_type():
    """A 2x5 RGB image whose rows use the filters 0 to 4, decoded back to its pixels."""
    pixels = [[(10, 20, 30), (40, 50, 60)], [(70, 80, 90), (15, 25, 35)], [(200, 0, 5), (1, 2, 3)],
              [(255, 255, 255), (0, 0, 0)], [(9, 99, 199), (100, 50, 25)]]
    raw, previous = b"", bytes(6)
    for kind, row in enumerate(pixels):
        line = bytes(value for pixel in row for value in pixel)
        filtered = bytearray(line)
        for x, value in enumerate(line):
            left = line[x - 3] if x >= 3 else 0
            above, upper_left = previous[x], previous[x - 3] if x >= 3 else 0
            estimate = left + above - upper_left
            distances = (abs(estimate - left), abs(estimate - above), abs(estimate - upper_left))
            paeth = (left, above, upper_left)[distances.index(min(distances))]
            filtered[x] = (value - (0, left, above, (left + above) // 2, paeth)[kind]) & 0xFF
        raw += bytes([kind]) + filtered
        previous = line

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 5, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    assert decode_png(png) == (2, 5, pixels)


def svg_size(svg):
    root = ET.fromstring(svg.encode("utf-8"))
    return int(root.get("width")), int(root.get("height"))


def processes_mentioning(text):
    """Live processes whose command line has text in it (Chromium's crash handlers leave its process group)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if text.encode() in cmdline.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def chromium(tmp_path, *args):
    """Runs Chromium on args; returns its stdout. Fails past TIMEOUT, or when a process of it stays behind."""
    home = tmp_path / "chromium-home"
    home.mkdir(exist_ok=True)
    # TMPDIR relative to the working directory home: Chromium makes a unix socket there, whose path must be
    # shorter than 108 bytes, and tmp_path's can be longer.
    env = dict(os.environ, HOME=str(home), TMPDIR=".", XDG_CONFIG_HOME=str(home / "config"),
               XDG_CACHE_HOME=str(home / "cache"))
    assert shutil.which("chromium"), "no chromium on PATH: tier two needs it (bash hack/bootstrap.sh --full installs it)"
    argv = ["unshare", "--net", "--", "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={home / 'profile'}", *args]
    # A session of its own: on a timeout its whole process group goes.
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=home,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    finally:
        leftovers = wait_for_the_end(str(home))
        shutil.rmtree(home)  # its profile: megabytes nobody reads
    assert process.returncode == 0, stderr[-3000:]
    assert not leftovers, f"Chromium's processes {leftovers} outlived it"
    return stdout


def wait_for_the_end(home, seconds=10):
    """The processes of a Chromium run under home still alive after a while; they are killed."""
    deadline = time.monotonic() + seconds
    while processes_mentioning(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = processes_mentioning(home)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


def inked_share(rows):
    """The share of the pixels that are not white."""
    return sum(1 for row in rows for pixel in row if min(pixel) < 235) / sum(len(row) for row in rows)


def red_pixels(rows):
    return sum(1 for row in rows for r, g, b in row if r >= RED[0] and g <= RED[1] and b <= RED[2])


def check_picture(png, size, flow):
    width, height, rows = decode_png(png)
    assert (width, height) == size
    assert rows[0][0] == (255, 255, 255)  # the background
    inked = inked_share(rows)
    assert inked > 0.04, f"only {inked:.1%} of the picture is drawn"
    if flow["findings"]:
        # The findings are the last lines of the picture (the red "not seen" and outline are higher up).
        assert red_pixels(rows[-60:]) > 50, "the findings are not red"
    else:
        assert red_pixels(rows) == 0, "red in the picture of a flow that worked"


@pytest.mark.full
@FLOWS
def test_chromium_draws_the_svg_at_its_size_with_red_only_for_findings(flow, tmp_path):
    svg = hop_diagram(flow)
    size = svg_size(svg)
    (tmp_path / "diagram.svg").write_text(svg, encoding="utf-8")
    chromium(tmp_path, f"--screenshot={tmp_path / 'shot.png'}", f"--window-size={size[0]},{size[1]}",
             f"file://{tmp_path / 'diagram.svg'}")
    check_picture((tmp_path / "shot.png").read_bytes(), size, flow)


@pytest.mark.full
@FLOWS
def test_chromium_parses_the_svg(flow, tmp_path):
    (tmp_path / "diagram.svg").write_text(hop_diagram(flow), encoding="utf-8")
    dom = chromium(tmp_path, "--dump-dom", f"file://{tmp_path / 'diagram.svg'}")
    assert "parsererror" not in dom
    assert dom.lstrip().startswith("<svg")
    for text in (flow["mapping"], flow["detail"], "10.244.1.2:9090" if flow is TCP else "not seen",
                 flow["hops"][3]["hop"], "ip nat PREROUTING", *(finding["hop"] for finding in flow["findings"])):
        assert html.escape(text, quote=False) in dom, text


# Lays the SVG out in a page and reports, as JSON in #report, every text's box and group, and the rect of each box.
LAYOUT_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>html, body { margin: 0 }</style></head><body>
%s
<pre id="report"></pre>
<script>
const svg = document.querySelector("svg");
const box = element => { const b = element.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; };
const texts = [...svg.querySelectorAll("text")].map(text => ({
  text: text.textContent, box: box(text), group: (text.closest("g[id]") || {}).id || null }));
const groups = Object.fromEntries([...svg.querySelectorAll("g[id^='box-']")].map(g => [g.id, box(g.querySelector("rect"))]));
document.getElementById("report").textContent = JSON.stringify({texts, groups});
</script></body></html>
"""


@pytest.mark.full
@FLOWS
def test_in_chromium_no_text_leaves_the_picture_or_its_box_or_meets_another(flow, tmp_path):
    svg = hop_diagram(flow)
    width, height = svg_size(svg)
    page = tmp_path / "layout.html"
    page.write_text(LAYOUT_PAGE % re.sub(r"^<\?xml[^>]*\?>", "", svg), encoding="utf-8")
    dom = chromium(tmp_path, "--dump-dom", f"file://{page}")
    report = json.loads(html.unescape(re.search(r'<pre id="report">(.*?)</pre>', dom, re.S).group(1)))
    texts = report["texts"]
    assert len(texts) > 30
    boxes = report["groups"]
    for text in texts:
        left, top, right, bottom = text["box"]
        assert 0 <= left and right <= width and 0 <= top and bottom <= height, text
        kind, _dash, number = (text["group"] or "").partition("-")
        if kind == "box":
            box_left, box_top, box_right, box_bottom = boxes[text["group"]]
            assert box_left < left and right < box_right and box_top < top and bottom < box_bottom, text
        elif kind in ("request", "reply"):  # an arrow's text stays in the gap between its two boxes
            assert boxes[f"box-{number}"][2] < left and right < boxes[f"box-{int(number) + 1}"][0], text
    for index, one in enumerate(texts):
        for other in texts[index + 1:]:
            overlap_x = min(one["box"][2], other["box"][2]) - max(one["box"][0], other["box"][0])
            overlap_y = min(one["box"][3], other["box"][3]) - max(one["box"][1], other["box"][1])
            assert overlap_x <= 0.5 or overlap_y <= 0.5, (one, other)


@FLOWS
def test_rsvg_convert_makes_a_png_of_the_svg_size(flow, tmp_path):
    svg = hop_diagram(flow)
    (tmp_path / "diagram.svg").write_text(svg, encoding="utf-8")
    subprocess.run(["rsvg-convert", "-f", "png", "-o", str(tmp_path / "diagram.png"), str(tmp_path / "diagram.svg")],
                   check=True, timeout=TIMEOUT)
    check_picture((tmp_path / "diagram.png").read_bytes(), svg_size(svg), flow)

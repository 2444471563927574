# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Input checks shared by the modules.

Every check raises InvalidInput naming the option, so a module can refuse bad
input with one clear message before it reads or changes anything.
"""
from __future__ import annotations

import ipaddress
import re

# Linux IFNAMSIZ is 16 including the terminating NUL.
IFNAME_MAX_LEN = 15
# What the collection publishes, and which of those have ports.
PROTOCOLS = ("tcp", "udp", "icmp")
PORTED_PROTOCOLS = ("tcp", "udp")
PORT_MIN, PORT_MAX = 1, 65535
# The names the collection writes into rule comments, unit names and file names (mappings, services,
# demo instances): letters, digits, '.', '_' and '-', not starting with '-', so that nothing in a name
# can close a quoted comment or read as an option.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidInput(ValueError):
    """An option value the module refuses; str() names the option first."""

    def __init__(self, field, problem):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def check_integer(field, value, low, high):
    """An integer in low..high; a string of digits (from a command line or an inventory) is taken as its number."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(field, f"{value} is outside {low}..{high}")
    return value


def check_port(field, value):
    return check_integer(field, value, PORT_MIN, PORT_MAX)


def check_protocol(field, value):
    if value not in PROTOCOLS:
        raise InvalidInput(field, f"{value!r} is not one of {', '.join(PROTOCOLS)}")
    return value


def check_name(field, value, what):
    """A name matching NAME_PATTERN; `what` says what it names, for the message."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidInput(field, f"{value!r} is not a valid {what}: use up to 128 letters, digits, '.', '_' and '-', "
                                  "not starting with '-'")
    return value


def check_ifname(field, value):
    """Apply the kernel's dev_valid_name() rules to an interface name."""
    if not value:
        raise InvalidInput(field, "an interface name must not be empty")
    if len(value) > IFNAME_MAX_LEN:
        raise InvalidInput(
            field, f"interface name {value!r} is {len(value)} characters long; Linux allows at most {IFNAME_MAX_LEN}"
        )
    if value in (".", ".."):
        raise InvalidInput(field, f"{value!r} is not a valid interface name")
    for char in value:
        if char in "/:" or char.isspace() or not char.isprintable():
            raise InvalidInput(field, f"interface name {value!r} must not contain {char!r}")
    return value


def check_netns_name(field, value):
    """A namespace name becomes a file under /run/netns: it must be a plain file name."""
    if not value or value in (".", ".."):
        raise InvalidInput(field, f"{value!r} is not a plain file name")
    if "/" in value:
        raise InvalidInput(field, f"netns name {value!r} must be a plain file name, without '/'")
    if any(not char.isprintable() or char.isspace() for char in value):
        raise InvalidInput(field, f"netns name {value!r} must not contain whitespace or control characters")
    if len(value.encode()) > 255:
        raise InvalidInput(field, "netns name is longer than 255 bytes")
    return value


def parse_ipv4_interface(field, value):
    """Parse 'a.b.c.d/len' into an IPv4Interface usable as a host address."""
    if "/" not in value:
        raise InvalidInput(field, f"{value!r} is not in CIDR notation (expected an address with a prefix, e.g. 10.244.1.2/24)")
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise InvalidInput(field, f"{value!r} is not an IPv4 address in CIDR notation (e.g. 10.244.1.2/24)") from None
    if iface.network.prefixlen > 30 and iface.network.prefixlen != 31:
        raise InvalidInput(field, f"{value!r}: a /{iface.network.prefixlen} leaves no room for a peer address")
    if iface.network.prefixlen <= 30 and iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise InvalidInput(field, f"{value!r} is the network or broadcast address of {iface.network}")
    return iface


def parse_ipv4_address(field, value):
    """Parse a plain IPv4 address; a CIDR is refused where an address is wanted."""
    if "/" in value:
        raise InvalidInput(field, f"{value!r} is a CIDR; an IPv4 address without a prefix is expected")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidInput(field, f"{value!r} is not an IPv4 address") from None


def address_in(address, networks):
    """Whether an IPv4 address is in one of `networks` (CIDR strings): who a list of allowed sources lets in."""
    address = ipaddress.IPv4Address(address)
    return any(address in ipaddress.IPv4Network(network) for network in networks)


def check_allowed_sources(field, values):
    """An allowed_sources list: IPv4 addresses or networks, collapsed (overlapping and adjacent networks merged,
    as a set of intervals holds them) and sorted. An empty list is refused: it would shut the port to everyone."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise InvalidInput(field, f"must be a list of IPv4 addresses or networks, not {type(values).__name__}")
    if not values:
        raise InvalidInput(field, "is empty, which would let no client in; leave it out to let every client in, "
                                  "or list 0.0.0.0/0")
    networks = []
    for index, value in enumerate(values):
        try:
            networks.append(ipaddress.IPv4Network(str(value).strip()))
        except ValueError as exc:
            raise InvalidInput(f"{field}[{index}]", f"{value!r} is not an IPv4 address or network in CIDR notation "
                                                    f"({exc})") from None
    return tuple(str(network) for network in ipaddress.collapse_addresses(networks))

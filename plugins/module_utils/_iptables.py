# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables backend: read with one iptables-save, write with one iptables-restore.

The collection owns a few chains of its own, and in the built-in chains only the
jump rules that carry the comment OWNER_COMMENT. Everything else in the dump is
foreign and is never written: a transaction only names owned chains and rules,
and runs with --noflush.

The planner (_dnat.plan_dnat) sees this backend through _dnat.IptablesRuleset; the
nftables backend (_nftables) offers the same calls over its own table.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from ansible_collections.netns.expose.plugins.module_utils._packages import install_hint

OWNER_COMMENT = "netns.expose"
JUMP_COMMENT = f'-m comment --comment "{OWNER_COMMENT}"'
# Seconds iptables-restore waits for the xtables lock held by another program.
XTABLES_LOCK_WAIT = "10"
VARIANTS = ("nft", "legacy")

_COMMENT = re.compile(r'-m comment --comment (?:"([^"]*)"|(\S+))')


def is_shared_comment(comment):
    """Whether a rule with this comment is one that no mapping owns: what the mappings share (OWNER_COMMENT), and
    the collection's records and rules of its own ("netns.expose/...": the ip_forward marker, the namespace
    networks' rules, the router's drop). Such rules do not keep an order among themselves by their comment."""
    return comment == OWNER_COMMENT or (comment or "").startswith(f"{OWNER_COMMENT}/")


def rule_comment(line):
    match = _COMMENT.search(line)
    return None if match is None else (match.group(1) if match.group(1) is not None else match.group(2))


@dataclass
class Dump:
    """What iptables-save printed, per table: chain names and rule lines in order."""

    chains: dict = field(default_factory=dict)  # table -> [chain, ...]
    rules: dict = field(default_factory=dict)  # table -> [(chain, "-A chain ..."), ...]
    policies: dict = field(default_factory=dict)  # table -> {built-in chain: ACCEPT or DROP}

    def table_lines(self, table, chain):
        return [line for rule_chain, line in self.rules.get(table, []) if rule_chain == chain]


def parse_save(text):
    dump = Dump()
    table = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
            dump.chains.setdefault(table, [])
            dump.rules.setdefault(table, [])
        elif line == "COMMIT":
            table = None
        elif line.startswith(":") and table:
            words = line[1:].split()
            dump.chains[table].append(words[0])
            if len(words) > 1 and words[1] != "-":
                dump.policies.setdefault(table, {})[words[0]] = words[1]
        elif line.startswith("-A ") and table:
            dump.rules[table].append((line.split()[1], line))
    return dump


@dataclass
class OwnedRules:
    """The rules this collection owns, as iptables-save prints them.

    chains: table -> {owned chain -> [rule lines]}
    jumps:  table -> {built-in chain -> jump rule line}
    """

    chains: dict = field(default_factory=dict)
    jumps: dict = field(default_factory=dict)

    def is_empty(self):
        return not any(self.chains.values()) and not any(self.jumps.values())


def jump_line(builtin_chain, owned_chain):
    return f"-A {builtin_chain} {JUMP_COMMENT} -j {owned_chain}"


def owned_rules(dump, owned_chains):
    """Pick out of a dump the owned chains and the jumps to them from the other chains.

    owned_chains: table -> the names of the owned chains, or a function that tells an owned chain
    by its name (for chains made as they are needed). Chains are in the order of the dump.
    """
    owned = OwnedRules()
    for table, names in owned_chains.items():
        is_owned = names if callable(names) else set(names).__contains__
        owned.chains[table] = {name: dump.table_lines(table, name) for name in dump.chains.get(table, []) if is_owned(name)}
        owned.jumps[table] = {}
        for chain, line in dump.rules.get(table, []):
            target = line.rsplit(" -j ", 1)[-1]
            if not is_owned(chain) and is_owned(target) and rule_comment(line) == OWNER_COMMENT:
                owned.jumps[table][chain] = line
    return owned


def foreign_rules(dump, owned_chains):
    """The rules and chains of a dump that are not owned: what the host itself (Docker, a firewall) put there.

    A built-in chain's policy is not a rule: a DROP policy alone is not foreign."""
    owned = owned_rules(dump, owned_chains)
    jumps = {line for table_jumps in owned.jumps.values() for line in table_jumps.values()}
    found = []
    for table, lines in dump.rules.items():
        chains = owned.chains.get(table, {})
        found.extend(line for chain, line in lines if chain not in chains and line not in jumps)
    for table, names in dump.chains.items():
        builtin = dump.policies.get(table, {})
        found.extend(f":{name}" for name in names if name not in builtin and name not in owned.chains.get(table, {}))
    return found


def _groups(lines):
    """comment -> the lines that carry it, in order."""
    groups = {}
    for line in lines:
        groups.setdefault(rule_comment(line), []).append(line)
    return groups


def chain_changes(have, want, ordered=False):
    """(lines to delete, lines to append) that turn the rules `have` of a chain into `want`.

    The rules that share a comment (a mapping's) keep their order: a CONNMARK before its DNAT.
    If deleting what is surplus and appending what is missing would not give them in the
    wanted order, all of them are deleted and appended again. The shared rules (is_shared_comment)
    do not depend on each other's order by their comment. Other rules are not touched.
    In an `ordered` chain every rule depends on the order: the missing rules are inserted at their
    place (see _in_place), or, when what stays is not in the wanted order, the whole chain is
    deleted and appended again.
    """
    delete, append = [], []
    have_groups, want_groups = _groups(have), _groups(want)
    for comment in list(have_groups) + [comment for comment in want_groups if comment not in have_groups]:
        old, new = have_groups.get(comment, []), want_groups.get(comment, [])
        surplus = Counter(old) - Counter(new)
        missing = Counter(new) - Counter(old)
        kept = []
        for line in old:
            if surplus[line]:
                surplus[line] -= 1
                delete.append(line)
            else:
                kept.append(line)
        added = []
        for line in new:
            if missing[line]:
                missing[line] -= 1
                added.append(line)
        if not is_shared_comment(comment) and kept + added != new:
            delete.extend(kept)
            added = list(new)
        append.extend(added)
    if ordered:
        return delete, _in_place(have, want, delete, append)
    return delete, append


def _in_place(have, want, delete, append):
    """The `append` of an ordered chain as inserts at the wanted positions ("-I <chain> <n> ..."), when what
    stays of `have` after `delete` is in the order of `want`; else every rule of `have` is deleted too."""
    deleted = Counter(delete)
    left = []
    for line in have:
        if deleted[line]:
            deleted[line] -= 1
        else:
            left.append(line)
    if not left or left + append == list(want):
        return append if left else list(want)
    missing, inserts, position = Counter(append), [], 0
    for index, line in enumerate(want):
        if position < len(left) and left[position] == line:
            position += 1
        elif missing[line]:
            missing[line] -= 1
            chain = chain_of(line)
            inserts.append(f"-I {chain} {index + 1}{line[len(f'-A {chain}'):]}")
        else:
            break
    if position == len(left) and not +missing:
        return inserts
    delete[:] = list(have)
    return list(want)


def chain_of(line):
    """The chain of a rule line ("-A <chain> ...")."""
    return line.split(maxsplit=2)[1]


# Jumps are inserted first in these built-in chains: an ACCEPT for a mapped flow
# must come before a host's own DROP rules, and a hairpin MASQUERADE before a
# host's own ACCEPT or SNAT rules would end the nat table's walk.
INSERT_FIRST = {("filter", "FORWARD"), ("nat", "POSTROUTING")}


def restore_script(current, desired, ordered=frozenset()):
    """The iptables-restore --noflush input that turns `current` into `desired`.

    Only owned chains and jumps appear in it. Rules are deleted and appended one by
    one (not rewritten), so untouched rules keep their place and counters; the rules
    of one mapping keep their order (see chain_changes), and the chains named in `ordered` keep theirs.
    Returns (script, counts) where counts is table -> (added, deleted); the script
    is empty when nothing differs.
    """
    blocks = []
    counts = {}
    for table in sorted(set(current.chains) | set(desired.chains) | set(current.jumps) | set(desired.jumps)):
        have = current.chains.get(table, {})
        want = desired.chains.get(table, {})
        have_jumps = current.jumps.get(table, {})
        want_jumps = desired.jumps.get(table, {})
        lines = []
        added = deleted = 0
        for chain in want:
            if chain not in have:
                # Declaring a chain that exists would flush it under --noflush: only new ones.
                lines.append(f":{chain} - [0:0]")
        appends = []
        for chain, rules in want.items():
            to_delete, to_append = chain_changes(have.get(chain, []), rules, chain in ordered)
            lines.extend("-D" + line[2:] for line in to_delete)
            deleted += len(to_delete)
            appends.extend(to_append)
        for builtin, line in sorted(have_jumps.items()):
            if want_jumps.get(builtin) != line:
                lines.append("-D" + line[2:])
                deleted += 1
        # Every chain that goes is emptied before any is deleted: one may still jump to another.
        gone = [chain for chain in have if chain not in want]
        lines.extend(f"-F {chain}" for chain in gone)
        lines.extend(f"-X {chain}" for chain in gone)
        deleted += sum(len(have[chain]) for chain in gone)
        lines.extend(appends)
        added += len(appends)
        for builtin, line in sorted(want_jumps.items()):
            if have_jumps.get(builtin) != line:
                if (table, builtin) in INSERT_FIRST:
                    line = f"-I {builtin} 1" + line[len(f"-A {builtin}"):]
                lines.append(line)
                added += 1
        if lines:
            blocks.append("\n".join([f"*{table}", *lines, "COMMIT"]))
            counts[table] = (added, deleted)
    return ("\n".join(blocks) + "\n" if blocks else ""), counts


class IptablesError(Exception):
    pass


class IptablesBackend:
    """Runs the iptables-save/-restore pair of one variant through module.run_command."""

    def __init__(self, module, variant):
        self.module = module
        self.variant = self.detect_variant() if variant == "auto" else variant
        self.save_bin = self._binary(f"iptables-{self.variant}-save")
        self.restore_bin = self._binary(f"iptables-{self.variant}-restore")

    def _binary(self, name):
        path = self.module.get_bin_path(name)
        if not path:
            raise IptablesError(f"iptables: {name} was not found on the host; {install_hint('iptables')}")
        return path

    def detect_variant(self):
        """The variant the host's `iptables` command uses, as Docker and the admin will."""
        iptables = self.module.get_bin_path("iptables")
        if iptables:
            rc, out, err = self.module.run_command([iptables, "--version"])
            if rc == 0 and "legacy" in out:
                return "legacy"
            if rc == 0 and "nf_tables" in out:
                return "nft"
        for variant in VARIANTS:
            if self.module.get_bin_path(f"iptables-{variant}-restore"):
                return variant
        raise IptablesError("iptables: no iptables-nft-restore or iptables-legacy-restore found on the host; "
                            + install_hint("iptables"))

    def read(self):
        rc, out, err = self.module.run_command([self.save_bin])
        if rc != 0:
            raise IptablesError(f"{self.save_bin} failed ({rc}): {err.strip()}")
        return parse_save(out)

    def commit(self, script):
        rc, out, err = self.module.run_command(
            [self.restore_bin, "--noflush", "--wait", XTABLES_LOCK_WAIT], data=script, binary_data=True
        )
        if rc != 0:
            raise IptablesError(f"{self.restore_bin} failed ({rc}): {(err or out).strip()}")

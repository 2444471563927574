"""The files that bring back at boot what netns_veth and dnat_rule set up (option persistent), planned
against a temporary root instead of the host's /etc (no systemd, no netlink)."""
from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _dnat, _netns_veth, _nftables, _persist
from ansible_collections.netns.expose.plugins.module_utils._iptables import OwnedRules, parse_save

from test_netns_veth_batch_plan import FakeNetlink, batch, entry


class FakeSystemd:
    def __init__(self, active=()):
        self.active = set(active)
        self.calls = []

    def run(self, *args):
        self.calls.append(args)

    def reload(self):
        self.calls.append(("daemon-reload",))

    def is_active(self, unit):
        return unit in self.active


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Every path of the persistence under tmp_path."""
    monkeypatch.setattr(_persist, "STATE_DIR", str(tmp_path / "etc/netns-expose"))
    monkeypatch.setattr(_persist, "UNIT_DIR", str(tmp_path / "etc/systemd/system"))
    monkeypatch.setattr(_netns_veth, "NETNS_FILES", str(tmp_path / "etc/netns-expose/netns"))
    monkeypatch.setattr(_dnat, "RULES_FILE", str(tmp_path / "etc/netns-expose/iptables.rules"))
    monkeypatch.setattr(_dnat, "NFT_RULES_FILE", str(tmp_path / "etc/netns-expose/nftables.nft"))
    monkeypatch.setattr(_dnat, "SYSCTL_FILE", str(tmp_path / "etc/sysctl.d/90-netns-expose.conf"))
    return tmp_path


def test_systemd_escape_is_systemd_escape():
    assert _persist.systemd_escape("ns1") == "ns1"
    assert _persist.systemd_escape("web-a") == "web\\x2da"
    assert _persist.systemd_escape(".x+y") == "\\x2ex\\x2by"


def netns_run(root, params, systemd):
    return _netns_veth.VethRun(FakeNetlink(), params, systemd=systemd)


def test_netns_veth_writes_batch_files_a_template_and_the_link_that_enables_it(root):
    systemd = FakeSystemd()
    run = netns_run(root, {**batch(entry(1), entry(2, default_route=False, mtu=1400)), "persistent": True}, systemd)
    written = run.plan.after[_persist.VIEW_KEY]
    host = str(root / "etc/netns-expose/netns/b2.host")
    assert written[host].splitlines()[1:] == [
        "netns add b2", "link add vb2h mtu 1400 type veth peer name vb2n mtu 1400 netns b2",
        "addr add 10.244.2.3/24 dev vb2h", "link set vb2h up"]
    assert written[str(root / "etc/netns-expose/netns/b1.ns")].splitlines()[1:] == [
        "link set lo up", "link set lo alias netns.expose", "addr add 10.244.1.2/24 dev vb1n", "link set vb1n up",
        "route add default via 10.244.1.3"]
    template = str(root / "etc/systemd/system/netns-expose-netns@.service")
    assert "ConditionPathExists=!/run/netns/%I" in written[template]
    assert written[str(root / "etc/systemd/system/multi-user.target.wants/netns-expose-netns@b1.service")] == \
        f"symlink to {template}"
    assert run.plan.actions[-1].startswith("reload systemd")
    run.plan.apply()
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/netns-expose-netns@b2.service") == template
    assert systemd.calls == [("daemon-reload",)]
    # Nothing differs now: no step. A file changed by hand is drift that the next run puts back.
    again = netns_run(root, {**batch(entry(1), entry(2, default_route=False, mtu=1400)), "persistent": True}, FakeSystemd())
    assert not [action for action in again.plan.actions if str(root) in action]
    (root / "etc/netns-expose/netns/b1.ns").write_text("by hand\n", encoding="utf-8")
    again = netns_run(root, {**batch(entry(1), entry(2, default_route=False, mtu=1400)), "persistent": True}, FakeSystemd())
    assert [action for action in again.plan.actions if str(root) in action] == [
        f"write {root}/etc/netns-expose/netns/b1.ns (it differs)"]


def test_netns_veth_absent_or_not_persistent_removes_the_listed_namespaces_files(root):
    netns_run(root, {**batch(entry(1), entry(2)), "persistent": True}, FakeSystemd()).plan.apply()
    run = netns_run(root, {**batch(entry(1)), "persistent": False}, FakeSystemd())
    removed = [action for action in run.plan.actions if action.startswith("remove")]
    assert len(removed) == 3 and all("b1" in action for action in removed), "b2 is not listed: its files stay"
    run.plan.apply()
    # The template goes with the last persisted namespace.
    netns_run(root, {**batch(entry(2)), "state": "absent", "persistent": True}, FakeSystemd()).plan.apply()
    assert not list((root / "etc").rglob("*.service")) and not (root / "etc/netns-expose").exists()


def test_netns_veth_without_systemd_writes_nothing_and_warns(root):
    run = netns_run(root, {**batch(entry(1)), "persistent": True}, None)
    assert _persist.VIEW_KEY not in run.plan.after
    assert "will not come back after a reboot" in run.plan.warnings[0]


SAVE = """*nat
:PREROUTING ACCEPT [0:0]
COMMIT
*filter
:FORWARD DROP [0:0]
COMMIT
"""


class Backend:
    variant = "nft"


def dnat_plan(mappings, persistent=True, systemd=None, ip_forward=0, exclusive=True):
    spec = _dnat.DnatSpec(mappings=mappings, state="present", exclusive=exclusive, ip_forward=True, accept_forward=True,
                          persistent=persistent)
    return _dnat.build_plan(Backend(), spec, parse_save(SAVE), ip_forward, systemd=systemd or FakeSystemd())


WEB = _dnat.Mapping(name="web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090,
                    destination="10.211.55.122")


def test_dnat_rule_persists_only_its_rules_a_unit_that_reloads_with_the_firewall_and_ip_forward(root):
    systemd = FakeSystemd()
    plan = dnat_plan([WEB], systemd=systemd)
    files = plan.after[_persist.VIEW_KEY]
    rules = files[str(root / "etc/netns-expose/iptables.rules")]
    assert rules.startswith("# Written by netns.expose (dnat_rule)")
    # What iptables-restore --noflush reads: the owned chains and the jumps, nothing foreign.
    assert ":PREROUTING" not in rules and ":FORWARD" not in rules
    assert "-A PREROUTING -m comment --comment \"netns.expose\" -j NETNS-EXPOSE" in rules
    assert "--to-destination 10.244.1.2:9090" in rules
    unit = files[str(root / "etc/systemd/system/netns-expose-rules.service")]
    assert "PartOf=nftables.service netfilter-persistent.service" in unit
    assert "Before=network-online.target" in unit
    assert f"ExecStart=iptables-nft-restore --noflush --wait 10 {root}/etc/netns-expose/iptables.rules" in unit
    assert 'ExecStartPre=-iptables-nft -t nat -D PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE' in unit
    assert files[str(root / "etc/sysctl.d/90-netns-expose.conf")].endswith("net.ipv4.ip_forward = 1\n")
    assert plan.actions[-2:] == ["reload systemd (daemon-reload), which reads unit files only then",
                                 "start netns-expose-rules.service, so that it restarts with the firewall loaders"]


def test_dnat_rule_writes_no_sysctl_file_when_forwarding_was_on_already(root):
    assert str(root / "etc/sysctl.d/90-netns-expose.conf") not in dnat_plan([WEB], ip_forward=1).after[_persist.VIEW_KEY]


def test_dnat_rule_removes_its_files_and_stops_its_unit_with_the_last_mapping_or_persistent_false(root):
    for path, content in _dnat.persisted_files("nft", _dnat.desired_rules(
            _dnat.DnatSpec([WEB], "present", True, True, True), {}, mark_ip_forward=True)).items():
        _persist.write_file(path, content)
    systemd = FakeSystemd(active=["netns-expose-rules.service"])
    plan = dnat_plan([], systemd=systemd)
    assert "stop netns-expose-rules.service" in plan.actions
    assert sum(action.startswith("remove /") for action in plan.actions) == 6
    plan = dnat_plan([WEB], persistent=False, systemd=FakeSystemd(active=["netns-expose-rules.service"]))
    assert "stop netns-expose-rules.service" in plan.actions


def test_the_empty_desired_rules_persist_nothing():
    assert _dnat.persisted_files("legacy", OwnedRules()) == {}


class CommittingBackend(Backend):
    def commit(self, script):
        pass


class FakeNft:
    def __init__(self, state=None):
        self.state = state or _nftables.NftState()

    def commit(self, text):
        self.state = text


def nft_plan(mappings, systemd, others=(), state=None, ip_forward=0, persistent=True):
    spec = _dnat.DnatSpec(mappings=mappings, state="present", exclusive=True, ip_forward=True, accept_forward=True,
                          persistent=persistent)
    backend = FakeNft(state)
    return _dnat.plan_dnat(_nftables.NftRuleset(backend, backend.state), spec, ip_forward, systemd=systemd, others=others)


def test_the_nftables_backend_persists_its_table_in_a_file_nft_loads_twice(root):
    plan = nft_plan([WEB], FakeSystemd())
    files = plan.after[_persist.VIEW_KEY]
    table = files[str(root / "etc/netns-expose/nftables.nft")]
    assert table.startswith("# Written by netns.expose (dnat_rule)")
    # Only the owned table; loading it again replaces it (the first two lines make it exist, then delete it).
    assert table.splitlines()[1:4] == ["table ip netns_expose {}", "delete table ip netns_expose", "table ip netns_expose {"]
    assert "counter packets" not in table, "counters are the host's, not the file's"
    assert 'comment "netns.expose:web"' in table and "set ip_forward_was_0" in table
    unit = files[str(root / "etc/systemd/system/netns-expose-rules.service")]
    assert f"ExecStart=nft -f {root}/etc/netns-expose/nftables.nft\n" in unit
    assert "PartOf=nftables.service\n" in unit and "WantedBy=multi-user.target nftables.service\n" in unit
    assert "After=network-pre.target nftables.service netfilter-persistent.service firewalld.service\n" in unit
    assert "Before=network-online.target" in unit and "iptables" not in unit
    assert f"ConditionPathExists={root}/etc/netns-expose/nftables.nft" in unit
    assert str(root / "etc/systemd/system/nftables.service.wants/netns-expose-rules.service") in files
    assert files[str(root / "etc/sysctl.d/90-netns-expose.conf")].endswith("net.ipv4.ip_forward = 1\n")
    assert str(root / "etc/netns-expose/iptables.rules") not in files


def test_switching_backends_replaces_the_files(root):
    desired = _dnat.desired_rules(_dnat.DnatSpec([WEB], "present", True, True, True), {}, mark_ip_forward=True)
    for path, content in _dnat.persisted_files("nft", desired).items():
        _persist.write_file(path, content)
    dump = parse_save(SAVE.replace("FORWARD DROP", "FORWARD ACCEPT") + _dnat.restore_script(OwnedRules(), desired)[0])
    other = _dnat.IptablesRuleset(CommittingBackend(), dump, root=("iptables-nft",))
    plan = nft_plan([WEB], FakeSystemd(active=["netns-expose-rules.service"]), others=[other])
    actions = [action.replace(str(root), "") for action in plan.actions if str(root) in action]
    assert actions == ["remove /etc/netns-expose/iptables.rules", "write /etc/netns-expose/nftables.nft",
                       "remove /etc/systemd/system/netfilter-persistent.service.wants/netns-expose-rules.service",
                       "write /etc/systemd/system/netns-expose-rules.service (it differs)"]
    plan.apply()
    assert not (root / "etc/netns-expose/iptables.rules").exists()


def test_a_forward_drop_host_persists_the_iptables_accept_next_to_the_table(root):
    dump = parse_save(SAVE)  # FORWARD policy DROP
    other = _dnat.IptablesRuleset(Backend(), dump, root=("iptables-nft",))
    files = nft_plan([WEB], FakeSystemd(), others=[other]).after[_persist.VIEW_KEY]
    rules = files[str(root / "etc/netns-expose/iptables-nft.rules")]
    assert "-A NETNS-EXPOSE-FWD -m connmark --mark 0x1000000/0x1000000" in rules and "*nat" not in rules
    unit = files[str(root / "etc/systemd/system/netns-expose-rules.service")]
    assert unit.index("ExecStart=nft -f") < unit.index(f"ExecStart=iptables-nft-restore --noflush --wait 10 {root}")
    assert 'ExecStartPre=-iptables-nft -t filter -D FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD' in unit
    assert "PartOf=nftables.service netfilter-persistent.service\n" in unit


def test_the_nftables_backend_removes_its_files_with_the_last_mapping(root):
    nft_plan([WEB], FakeSystemd()).apply()
    state = _nftables.NftRuleset.render({}, [(WEB, _dnat.Setup().of(WEB))], True)
    plan = nft_plan([], FakeSystemd(active=["netns-expose-rules.service"]), state=state, ip_forward=1)
    assert "stop netns-expose-rules.service" in plan.actions
    plan.apply()
    assert not list((root / "etc").rglob("*.nft")) and not list((root / "etc").rglob("*.service"))


def test_a_file_that_cannot_be_written_leaves_the_old_one_whole(tmp_path, monkeypatch):
    """A full filesystem (ENOSPC at the write or the fsync): the run fails with the reason, the file that was there
    stays as it was, and no temporary file is left beside it."""
    path = tmp_path / "netns-expose" / "iptables.rules"
    _persist.write_file(str(path), "old\n")

    def full(_descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_persist.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        _persist.write_file(str(path), "new\n" * 1000)
    assert path.read_text() == "old\n"
    assert sorted(item.name for item in path.parent.iterdir()) == ["iptables.rules"]


def test_a_file_and_a_link_replace_each_other(tmp_path):
    path = tmp_path / "unit.wants" / "netns-expose-rules.service"
    _persist.write_file(str(path), "a file\n")
    _persist.write_file(str(path), _persist.Link("/etc/systemd/system/netns-expose-rules.service"))
    assert path.is_symlink() and os.readlink(path) == "/etc/systemd/system/netns-expose-rules.service"
    _persist.write_file(str(path), "a file again\n")
    assert not path.is_symlink() and path.read_text() == "a file again\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(item.name for item in path.parent.iterdir()) == ["netns-expose-rules.service"]

# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/lab/nslab.py without a lab: which mounts pin which namespaces."""
from __future__ import annotations

import sys
from os import stat as os_stat
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
import nslab  # noqa: E402  pylint: disable=wrong-import-position

# A lab's namespace file, another lab's file whose namespace has the same inode number on
# another device, and files whose names merely look like namespaces.
MOUNTINFO = """\
29 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
328 29 254:0 /run/netns-expose-lab/lab1 /run/netns-expose-lab/lab1 rw,relatime - ext4 /dev/vda rw
373 328 0:4 net:[4026533112] /run/netns-expose-lab/lab1/master/net rw - nsfs nsfs rw
374 328 0:4 mnt:[4026533110] /run/netns-expose-lab/lab1/master/mnt rw - nsfs nsfs rw
400 29 0:77 net:[4026533040] /run/netns-expose-lab/other/lan/net rw - nsfs nsfs rw
401 29 254:0 /srv/net:[4026533040] /mnt/looks\\040like\\040net:[4026533040] rw - ext4 /dev/vda rw
"""


def test_mountinfo_gives_point_root_type_and_device():
    mounts = nslab.parse_mountinfo(MOUNTINFO)
    assert mounts[2] == nslab.Mount(point="/run/netns-expose-lab/lab1/master/net", root="net:[4026533112]",
                                    fstype="nsfs", device="0:4")
    assert mounts[5].point == "/mnt/looks like net:[4026533040]"


def test_a_namespace_is_its_device_and_inode_and_only_nsfs_mounts_hold_one():
    keys = [mount.namespace_key for mount in nslab.parse_mountinfo(MOUNTINFO)]
    assert keys == [None, None, ("0:4", 4026533112), ("0:4", 4026533110), ("0:77", 4026533040), None]


def test_the_key_of_an_open_file_names_its_device_as_mountinfo_does():
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        [proc] = [mount for mount in nslab.parse_mountinfo(mountinfo.read()) if mount.point == "/proc"][-1:]
    stat = os_stat("/proc")
    assert nslab.namespace_key(stat) == (proc.device, stat.st_ino)


def test_processes_pinning_compares_device_and_inode(monkeypatch):
    """The old check matched ':[<inode>]' anywhere in a line: a file name, or another device's namespace."""
    monkeypatch.setattr(nslab, "_pids", lambda: [2, 7])
    monkeypatch.setattr(nslab, "process_namespaces", lambda pid, kinds: {pid})  # each in a mount namespace of its own
    monkeypatch.setattr(nslab, "_read_mountinfo", lambda pid: MOUNTINFO if pid == 7 else MOUNTINFO.splitlines()[0])
    assert nslab.processes_pinning({("0:4", 4026533040)}) == []  # same inode, other device; and a file's name
    assert nslab.processes_pinning({("0:4", 4026533112)}) == [7]
    assert nslab.processes_pinning(set()) == []


def test_processes_pinning_reads_each_mount_namespace_once(monkeypatch):
    read = []
    monkeypatch.setattr(nslab, "_pids", lambda: [1, 2, 3])
    monkeypatch.setattr(nslab, "process_namespaces", lambda pid, kinds: {100})
    monkeypatch.setattr(nslab, "_read_mountinfo", lambda pid: read.append(pid) or MOUNTINFO)
    assert nslab.processes_pinning({("0:4", 4026533110)}) == [1]
    assert read == [1]


def test_the_lab_removes_the_collections_lock_files_by_their_name():
    from ansible_collections.netns.expose.plugins.module_utils import _lock  # pylint: disable=import-outside-toplevel
    assert nslab.COLLECTION_LOCK.format(inode=4026532242) == _lock.lock_file(4026532242, "/run/lock")

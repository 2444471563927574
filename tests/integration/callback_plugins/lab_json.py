# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stdout callback for the integration tests: the whole run as one JSON document.

ansible-core's `json` callback lives in ansible.posix, which this collection does not
depend on. This one prints the same shape for linear plays:
{"plays": [{"play": {...}, "tasks": [{"task": {...}, "hosts": {HOST: RESULT}}]}], "stats": {HOST: {...}}}

Each task's dict also has "duration": {"start": ..., "end": ..., "hosts": {HOST: seconds}}: when the
task started and when its last result came (seconds since the epoch), and for each host the seconds
from the task's start on that host (queued to a worker) to its result (bench/fleet_bench.py adds them up).
"""
from __future__ import annotations

DOCUMENTATION = r"""
name: lab_json
type: stdout
short_description: The whole run as one JSON document (tests only)
description:
  - Collects every task result per host and prints them, with the stats, as one JSON document at the end.
author:
  - netns.expose maintainers (@netns-expose)
"""

import json
import time

from ansible.plugins.callback import CallbackBase
from ansible.vars.clean import module_response_deepcopy, strip_internal_keys


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "lab_json"

    def __init__(self, display=None):
        super().__init__(display)
        self.plays = []
        self._host_starts = {}

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name(), "id": str(play._uuid)}, "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        now = time.time()
        duration = {"start": now, "end": now, "hosts": {}}
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name(), "id": str(task._uuid), "duration": duration},
                                        "hosts": {}})

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_runner_on_start(self, host, task):
        self._host_starts[(str(task._uuid), host.get_name())] = time.time()

    def _record(self, result, **outcome):
        now = time.time()
        record = dict(strip_internal_keys(module_response_deepcopy(result.result)), **outcome)
        record["action"] = result.task.action
        host = result.host.get_name()
        task = self.plays[-1]["tasks"][-1]
        task["hosts"][host] = record
        duration = task["task"]["duration"]
        duration["end"] = now
        started = self._host_starts.pop((str(result.task._uuid), host), None)
        if started is not None:
            duration["hosts"][host] = now - started

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True, **({"ignored": True} if ignore_errors else {}))

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        # default=str: tagged and other non-JSON values (dates...) become their text.
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, default=str, indent=2, sort_keys=True))

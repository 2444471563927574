# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stdout callback for the integration tests: the whole run as one JSON document.

ansible-core's `json` callback lives in ansible.posix, which this collection does not
depend on. This one prints the same shape for linear plays:
{"plays": [{"play": {...}, "tasks": [{"task": {...}, "hosts": {HOST: RESULT}}]}], "stats": {HOST: {...}}}
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

from ansible.plugins.callback import CallbackBase
from ansible.vars.clean import module_response_deepcopy, strip_internal_keys


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "lab_json"

    def __init__(self, display=None):
        super().__init__(display)
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name(), "id": str(play._uuid)}, "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name(), "id": str(task._uuid)}, "hosts": {}})

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def _record(self, result, **outcome):
        record = dict(strip_internal_keys(module_response_deepcopy(result.result)), **outcome)
        record["action"] = result.task.action
        self.plays[-1]["tasks"][-1]["hosts"][result.host.get_name()] = record

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        # default=str: tagged and other non-JSON values (dates...) become their text.
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, default=str, indent=2, sort_keys=True))

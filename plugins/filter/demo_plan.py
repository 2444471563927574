# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The documentation is in demo_plan.yml next to this file.
from __future__ import annotations

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.plugin_utils._demo import demo_plan


def _demo_plan(instances, state="present", found_units=(), exclusive=True):
    try:
        return demo_plan(instances, state=state, found_units=found_units, exclusive=exclusive)
    except InvalidInput as exc:
        return {"error": str(exc)}


class FilterModule:
    def filters(self):
        return {"demo_plan": _demo_plan}

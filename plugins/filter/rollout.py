# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The documentation is in the .yml files of the same names next to this file.
from __future__ import annotations

from ansible_collections.netns.expose.plugins.plugin_utils._rollout import judge, report, restore, restored_checks


class FilterModule:
    def filters(self):
        return {"rollout_restore": restore, "rollout_judge": judge, "rollout_report": report,
                "rollout_restored_checks": restored_checks}

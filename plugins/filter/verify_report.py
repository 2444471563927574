# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The documentation is in the .yml files of the same names next to this file.
from __future__ import annotations

from ansible_collections.netns.expose.plugins.plugin_utils._verify import by_master, checks, report, summary


class FilterModule:
    def filters(self):
        return {"verify_summary": summary, "verify_report": report, "verify_checks": checks, "verify_by_master": by_master}

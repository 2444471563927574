# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The documentation is in the .yml files of the same names next to this file.
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.plugin_utils._explain import FIRST_PORT, flows, report, table
from ansible_collections.netns.expose.plugins.plugin_utils._explain_svg import hop_diagram


def _flows(plans, routes, first_port=FIRST_PORT, chosen=None):
    try:
        return flows(plans, routes, first_port=first_port, chosen=chosen)
    except InvalidInput as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"explain_flows": _flows, "explain_report": report, "explain_table": table, "explain_svg": hop_diagram}

# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The documentation is in services_plan.yml next to this file.
from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.utils.display import Display

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.module_utils._services import services_plan, unknown_variable_warnings

display = Display()


def _services_plan(services, state="present", in_interface=None, host_ip=None, facts=None, local=True, variables=(),
                   fail=True):
    for warning in unknown_variable_warnings(variables or ()):
        display.warning(warning)
    try:
        return services_plan(services, state=state, in_interface=in_interface, host_ip=host_ip, facts=facts, local=local)
    except InvalidInput as exc:
        if fail:
            raise AnsibleFilterError(str(exc)) from None
        return {"error": str(exc)}


class FilterModule:
    def filters(self):
        return {"services_plan": _services_plan}

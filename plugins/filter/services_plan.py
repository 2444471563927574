# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The documentation is in services_plan.yml next to this file.
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.netns.expose.plugins.module_utils._services import services_plan
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def _services_plan(services, state="present", in_interface=None, host_ip=None, facts=None):
    try:
        return services_plan(services, state=state, in_interface=in_interface, host_ip=host_ip, facts=facts)
    except InvalidInput as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"services_plan": _services_plan}

# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Written by hack/role_spec_module.py from roles/expose/meta/argument_specs.yml: edit those, then run it.
"""The expose role's argument specs, as far as _services checks them on the managed host."""
from __future__ import annotations

# The fields of one entry of expose_services (the entry point `service`).
SERVICE_OPTIONS = {
    'name': {'type': 'str', 'required': True},
    'netns': {'type': 'str', 'required': True},
    'ns_ifname': {'type': 'str', 'required': True},
    'host_ifname': {'type': 'str', 'required': True},
    'ns_address': {'type': 'str', 'required': True},
    'host_address': {'type': 'str', 'required': True},
    'in_interface': {'type': 'str'},
    'host_ip': {'type': 'str'},
    'routed': {'type': 'bool', 'default': False},
    'allowed_sources': {'type': 'list', 'elements': 'str'},
    'demo': {'type': 'bool', 'default': False},
    'ports': {
        'type': 'list',
        'elements': 'dict',
        'default': [],
        'options': {
            'protocol': {'type': 'str', 'choices': ['tcp', 'udp', 'icmp'], 'default': 'tcp'},
            'host_port': {'type': 'int'},
            'ns_port': {'type': 'int'},
            'allowed_sources': {'type': 'list', 'elements': 'str'},
            'check': {'type': 'str', 'choices': ['http', 'tcp', 'udp', 'icmp']},
            'path': {'type': 'str'},
            'status': {'type': 'int'},
            'expect': {'type': 'str'},
            'probe': {'type': 'str'},
        },
    },
}

# The variables of the entry points main and plan.
ROLE_VARIABLES = (
    'expose_allow_empty',
    'expose_backend',
    'expose_exclusive',
    'expose_host_ip',
    'expose_in_interface',
    'expose_local_clients',
    'expose_manage_packages',
    'expose_persistent',
    'expose_services',
    'expose_state',
)

# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One computed plan per module run.

A module reads the host, then builds a Plan: an ordered list of steps, each
with a description, the call that performs it, and its effect on a
before/after view of the host. `changed`, the diff and check mode are all
derived from that one object, so they cannot disagree.
"""
from __future__ import annotations

import copy

# An effect value that deletes the key from the view.
REMOVE = object()


class Step:
    """One change: what it says, what it does, and how it changes the view."""

    def __init__(self, description, apply, effects):
        self.description = description
        self.apply = apply
        self.effects = effects


class Plan:
    def __init__(self, before):
        self.before = before
        self.after = copy.deepcopy(before)
        self.steps = []
        # What the module should warn about, whether or not it applies the plan.
        self.warnings = []

    def add(self, description, apply, effects=None):
        """Queue a step. `effects` maps a key path (tuple) in the view to its new value (or REMOVE).

        `apply` may be None for a step that a later step carries out together with
        others (a batch committed at once).
        """
        effects = effects or {}
        for path, value in effects.items():
            _set_path(self.after, path, value)
        self.steps.append(Step(description, apply, effects))

    @property
    def changed(self):
        return bool(self.steps)

    @property
    def actions(self):
        return [step.description for step in self.steps]

    @property
    def diff(self):
        return {"before": self.before, "after": self.after}

    def apply(self):
        """Run the steps in order; on failure say which step failed and what had been done."""
        for done, step in enumerate(self.steps):
            if step.apply is None:
                continue
            try:
                step.apply()
            except Exception as exc:  # pylint: disable=broad-exception-caught
                raise PlanApplyError(step.description, self.actions[:done], exc) from exc


class PlanApplyError(Exception):
    def __init__(self, failed_step, done, cause):
        super().__init__(f"failed to {failed_step}: {cause}")
        self.failed_step = failed_step
        self.done = done


def _set_path(view, path, value):
    for key in path[:-1]:
        view = view.setdefault(key, {})
    if value is REMOVE:
        view.pop(path[-1], None)
    else:
        view[path[-1]] = value

"""Prompts as data: a `Prompt` is a system text, a user template and a version.

The app holds every kind's prompts by name (`app.prompts`, e.g.
`"blog_post/keyword"`); stages read them from there (`run.prompt(name)`), so a
deployment replaces one with `app.prompt(name, system=..., user=...,
version=...)` without touching a stage. Each result records the version of the
prompt its text was written with (`prompt_version`), so results stay traceable
to the exact wording that produced them: change any built-in text and bump
VERSION.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VERSION = "2026-11-v2"


@dataclass(frozen=True)
class Prompt:
    """A system text and a user template, both `str.format` templates over the same values."""

    system: str
    user: str
    version: str = VERSION

    def format(self, **values: Any) -> tuple[str, str]:
        """(system, user) with the values filled in; a missing value raises KeyError naming it."""
        return self.system.format(**values), self.user.format(**values).strip()

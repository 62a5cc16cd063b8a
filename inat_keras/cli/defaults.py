"""Each flag's default in its help, taken from the values the command itself falls back on.

The shared flags default to None (so a command can tell a flag given from one left out, and a
command's own defaults can fill the rest); their help would show no default. ``show_defaults``
appends ``(default: X; --demo: Y)`` from the same dictionaries the command fills its settings from,
so the help cannot drift from what the command does.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any


def config_defaults(*classes: type) -> dict[str, Any]:
    """The field defaults of config dataclasses (later classes win), by field name (= the flag's dest)."""
    values: dict[str, Any] = {}
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                values[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                values[field.name] = field.default_factory()
    return values


def shown(value: Any) -> str:
    """A default as a user would type it: on/off, 32,64 for a list, 0.001 for a float."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def show_defaults(parser: argparse.ArgumentParser, defaults: Mapping[str, Any], demo: Mapping[str, Any]) -> None:
    """Append each flag's default (unless its help already names one) and its --demo value where that differs."""
    for action in parser._actions:
        if action.default is not None or not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        notes = []
        if action.dest in defaults and "default" not in str(action.help):
            notes.append(f"default: {shown(defaults[action.dest])}")
        if action.dest in demo and (action.dest not in defaults or demo[action.dest] != defaults[action.dest]):
            notes.append(f"--demo: {shown(demo[action.dest])}")
        if notes:
            action.help = f"{action.help} ({'; '.join(notes)})"

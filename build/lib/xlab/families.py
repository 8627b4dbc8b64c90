"""The model families beyond the core, each a package: what infer.py and manage.py ask them for.

A family's `cli.py` (optional) declares its infer.py front end (`FRONT_END`) and its manage.py
commands (`COMMANDS`) without importing the family's models (`xlab.common.plugins`). Adding a
family is adding its package here; nothing else at the top names it.
"""

from __future__ import annotations

import importlib
import importlib.util

from xlab.common.plugins import Command, FrontEnd

# In the order their options and commands appear in the scripts' --help.
FAMILIES = ("xlab.captions", "xlab.memory", "xlab.retro", "xlab.dialogue")


def _cli_modules() -> list:
    names = [f"{family}.cli" for family in FAMILIES]
    return [importlib.import_module(name) for name in names if importlib.util.find_spec(name) is not None]


def front_ends() -> list[FrontEnd]:
    """Every family's infer.py front end, in the order of FAMILIES."""
    return [module.FRONT_END for module in _cli_modules() if hasattr(module, "FRONT_END")]


def commands() -> list[Command]:
    """Every family's manage.py commands, in the order of FAMILIES."""
    return [command for module in _cli_modules() for command in getattr(module, "COMMANDS", ())]

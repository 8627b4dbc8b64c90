"""One-line argument errors: jsonargparse explains a bad key in a dozen lines plus the usage.

The line that matters (which option is unknown, which value has the wrong type) is buried in
the middle; this keeps the key and that line and drops the rest. A constructor's own XLabError
reaches the CLI wrapped in jsonargparse's ValueError (it tries each type of a union and reports
them all); `xlab_error_in` digs the user's line back out of that chain.
"""

from __future__ import annotations

import re
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from xlab.common.errors import XLabError

_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
          "Expected a <class 'NoneType'>", "Given value type:", "Given value:", "Problem with given class_path")


def condense(message: str) -> str:
    lines = [line.lstrip("- ").strip() for line in message.splitlines() if line.strip()]
    keys, what = [], None
    for line in lines:
        nested = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if nested:
            keys.append(nested.group(1))
            line = nested.group(2)
        if line and not any(n in line for n in _NOISE):
            what = line
            break
    if not keys:
        return what or (lines[0] if lines else "invalid arguments")
    return f"{'.'.join(keys)}: {what or 'invalid value'}"


class XLabArgumentParser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse probing alternatives: let it see the real error
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        raise XLabError(f"{condense(message)} (see {prog} --help)")


def xlab_error_in(error: BaseException) -> XLabError | None:
    """The XLabError that `error` wraps (its cause, or the cause's cause ...), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, XLabError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None

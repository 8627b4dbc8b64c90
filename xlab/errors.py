"""The one exception type for mistakes a user can fix.

Everything a user can get wrong (a missing file, an empty corpus, a setting out of range) raises
`XLabError` with a one-line message that names the problem and the fix. The entry points print
that line and exit with status 2 instead of showing a traceback.
"""

import sys


class XLabError(Exception):
    """A problem with the user's input, explained in one line."""


def exit_with(error: BaseException, code: int = 2) -> "NoReturn":  # noqa: F821
    """Print `error` as one line on stderr and exit; used by the scripts' `main`."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)

"""The one exception type for mistakes a user can fix.

Everything a user can get wrong (a missing file, an empty corpus, a setting out of range) raises
`XLabError` with a one-line message that names the problem and the fix. The entry points print
that line and exit with status 2 instead of showing a traceback.
"""

import os
import sys
from collections.abc import Callable


class XLabError(Exception):
    """A problem with the user's input, explained in one line."""


def last_line(error: BaseException) -> str:
    """The last non-empty line of an error's text: C++ libraries (faiss) put their message there,
    after the lines that say where it was raised."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def exit_with(error: BaseException, code: int = 2) -> "NoReturn":  # noqa: F821
    """Print `error` as one line on stderr and exit; used by the scripts' `main`."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_script(main: Callable[[], int | None]) -> None:
    """Run a script's `main` and exit with its status; output cut short by a closed pipe is fine."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)

"""How a CLI command ends when it does not succeed: one line on stderr (``error: ...``), or with ``--json`` one
object, ``{"error": {"code": "NOT_FOUND", "message": "..."}}`` (codes are gRPC status names), and exit 1 (2 for a
usage error); a quiet exit 141 (128 + SIGPIPE, as a shell reports ``yes | head``) when the reader of stdout went
away (``adapterfleet watch | head -1``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator

SIGPIPE_EXIT = 141
USAGE_EXIT = 2  # argparse's
_OS_CODES = {PermissionError: "PERMISSION_DENIED", FileNotFoundError: "NOT_FOUND", FileExistsError: "ALREADY_EXISTS",
             IsADirectoryError: "FAILED_PRECONDITION", NotADirectoryError: "FAILED_PRECONDITION"}


def error(code: str, message: str, as_json: bool) -> None:
    text = json.dumps({"error": {"code": code, "message": message}}) if as_json else f"error: {message}"
    with contextlib.suppress(OSError):  # stderr may be a closed pipe too
        print(text, file=sys.stderr, flush=True)


def os_error(err: OSError) -> tuple[str, str]:
    """(code, message) of a local failure: a file that is missing, not writable, ..."""
    where = f": {err.filename}" if err.filename else ""
    return _OS_CODES.get(type(err), "UNKNOWN"), f"{err.strerror or err}{where}"


def closed_pipe() -> int:
    """stdout's reader is gone: say nothing more. stdout now points at /dev/null, so the interpreter's own flush
    at exit does not fail again."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return SIGPIPE_EXIT


@contextlib.contextmanager
def usage_errors(as_json: bool) -> Iterator[None]:
    """While the command line is parsed: with ``as_json``, argparse's complaints (usage errors, exit 2; a missing
    extra, exit 1) come out as the JSON error object instead of usage text."""
    if not as_json:
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help, --version
            sys.stderr.write(captured.getvalue())
        else:
            lines = [line for line in captured.getvalue().splitlines() if line.strip()]
            message = lines[-1].split(": error: ", 1)[-1] if lines else "invalid command line"
            error("INVALID_ARGUMENT" if exit_.code == USAGE_EXIT else "FAILED_PRECONDITION", message, True)
        raise
    sys.stderr.write(captured.getvalue())

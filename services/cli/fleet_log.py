"""Why a fleet process stopped, read from what it wrote to its log: the root cause first, not the last line.

A service that fails to start often writes its real error (``OSError: [Errno 98] Address already in use``) and
then, while the interpreter shuts down, follow-on noise (``Exception ignored in: <function Server.__del__ ...>``
... ``RuntimeError: Event loop is closed``). The last lines of the log are then the wrong ones to show.
"""

from __future__ import annotations

from pathlib import Path

TRACEBACK = "Traceback (most recent call last):"
IGNORED = "Exception ignored in"  # CPython's "unraisable" report: a follow-on, never the cause
GRPC_BIND = "Failed to add port to server"  # gRPC core's own line; names the OS error of the failed bind
MAX_CAUSES = 3
MAX_CHARS = 400  # per line shown


def read_since(log: Path, offset: int) -> str:
    """What ``log`` gained after ``offset`` (logs are appended to across runs); '' when unreadable."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def root_causes(text: str) -> list[str]:
    """The lines that say why the process stopped, most telling first: the exception of the first traceback that
    is not a follow-on, the CLI's own ``error: ...`` line, gRPC's bind failure. Empty when there is none."""
    lines = text.splitlines()
    causes: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith(TRACEBACK) and not (i and lines[i - 1].startswith(IGNORED)):
            end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), None)
            if end is not None:
                causes.append(lines[end])
        elif line.startswith("error: "):  # adapterfleet.cli.main's report of a domain error
            causes.append(line)
        elif GRPC_BIND in line:
            causes.append(line[line.index(GRPC_BIND):])
    seen: list[str] = []
    for cause in causes:
        cause = cause.strip()[:MAX_CHARS]
        if cause not in seen:
            seen.append(cause)
    return seen[:MAX_CAUSES]


def tail(text: str, lines: int = 8) -> str:
    return "\n".join("  " + line[:MAX_CHARS] for line in text.splitlines()[-lines:]) or "  (empty)"


def explain(text: str) -> str:
    """Indented lines for an error message: the root causes when found, else the log's last lines."""
    causes = root_causes(text)
    return "\n".join("  " + c for c in causes) if causes else tail(text)

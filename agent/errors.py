"""One exception root for everything node-agent reports to a person.

Each subclass carries a ``help`` text that says what to do about it, so the CLI
can print one clear line (plus the hint) and exit with a status, and the daemon
can count the failure against the one item that caused it.
"""

from __future__ import annotations


class NodeAgentError(Exception):
    """Base of all expected failures; never a bug."""

    help: str = ""
    exit_code: int = 2

    def __init__(self, message: str, *, help: str | None = None) -> None:
        super().__init__(message)
        if help is not None:
            self.help = help

    def describe(self) -> str:
        text = str(self)
        return f"{text} ({self.help})" if self.help else text


class BinaryError(NodeAgentError):
    """An executable could not be read as a Go binary."""


class NotELFError(BinaryError):
    help = "node-agent reads ELF executables (Linux)"


class NotGoError(BinaryError):
    help = "no Go pclntab was found; is this a Go program?"


class UnsupportedGoError(BinaryError):
    help = "this pclntab version is not supported; please report the Go version"


class CorruptBinaryError(BinaryError):
    help = "the file is truncated or damaged"


class BudgetExceededError(BinaryError):
    """Parsing would cost more than its budget (items, bytes, CPU, memory or time)."""

    help = "the binary declares more than node-agent will parse; it is skipped"


class ProcessGoneError(NodeAgentError):
    """The process exited (or its files vanished) while we looked at it."""


class CgroupError(NodeAgentError):
    """A cgroup file was missing or could not be parsed."""


class DeadlineExceededError(NodeAgentError):
    """A cycle ran out of time (or the daemon was asked to stop); the rest of it is skipped."""


class BPFUnavailableError(NodeAgentError):
    """The BPF sampler cannot run here; ``help`` names what is missing."""

    exit_code = 3

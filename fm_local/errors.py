"""Error types and the fixed set of error codes.

Every error a user can meet is an :class:`FmError` carrying one line of text and an
exit code; the CLI prints that line (a traceback only with ``--debug``).
"""

from __future__ import annotations

from typing import Any

# Error codes recorded on failed node attempts (SPEC §3, §6, §8).
TIMEOUT = "TIMEOUT"
RATE_LIMIT = "RATE_LIMIT"
SERVER_ERROR = "SERVER_ERROR"
NETWORK = "NETWORK"
CLIENT_ERROR = "CLIENT_ERROR"
TRANSIENT = "TRANSIENT"
FATAL = "FATAL"
EXPRESSION_ERROR = "EXPRESSION_ERROR"
VALIDATION_ERROR = "VALIDATION_ERROR"
OUTPUT_NOT_SERIALIZABLE = "OUTPUT_NOT_SERIALIZABLE"
WORKER_CRASH = "WORKER_CRASH"
SUPERVISOR_CRASH = "SUPERVISOR_CRASH"
NODE_ERROR = "NODE_ERROR"
SHELL_ERROR = "SHELL_ERROR"
IMPORT_ERROR = "IMPORT_ERROR"
QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
TOTAL_TIMEOUT = "TOTAL_TIMEOUT"
CANCELLED = "CANCELLED"
DEPENDENCY_FAILED = "DEPENDENCY_FAILED"
EXECUTION_TIMEOUT = "EXECUTION_TIMEOUT"
# A value over the output limit (jsonio.MAX_OUTPUT_BYTES): a node's output, or a
# value the supervisor made (transform, merge, loop output).
OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
# A node's resolved input that cannot be sent to a worker.
INPUT_TOO_LARGE = "INPUT_TOO_LARGE"
INPUT_TOO_DEEP = "INPUT_TOO_DEEP"
# A bug met while the supervisor handled one execution's data: that node (or that
# execution) fails with it; every other execution goes on.
INTERNAL_ERROR = "INTERNAL_ERROR"

# Codes that are never retried unless a policy lists them explicitly.
NON_RETRYABLE = frozenset(
    {
        FATAL,
        CLIENT_ERROR,
        VALIDATION_ERROR,
        EXPRESSION_ERROR,
        INPUT_TOO_LARGE,
        INPUT_TOO_DEEP,
        INTERNAL_ERROR,
    }
)

# Exit codes of the CLI (SPEC §10).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ENGINE = 3


class FmError(Exception):
    """A user-facing error: one line of text and the exit code the CLI uses."""

    exit_code = EXIT_ENGINE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(FmError):
    exit_code = EXIT_USAGE


class WorkflowInvalid(FmError):
    """The workflow document failed validation; ``problems`` holds one line each."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(problems))


class StorageError(FmError):
    exit_code = EXIT_ENGINE


class AlreadyServed(FmError):
    """Another supervisor holds the database's lock."""


class QueueFull(FmError):
    """``settings.queue.maxSize`` executions of this workflow are already queued."""

    exit_code = EXIT_FAILED


class NodeError(Exception):
    """Raised by node code to fail with a specific error code (retry rules apply)."""

    def __init__(self, message: str, code: str = NODE_ERROR, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class FatalError(NodeError):
    """Raise from node code to fail at once: never retried."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message, FATAL, details)

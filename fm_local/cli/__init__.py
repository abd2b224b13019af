"""The ``fm`` command line: a thin click layer over the library (SPEC §10).

Every error a user can meet prints one line and exits with the spec's code:
0 success, 1 the execution failed/was cancelled/timed out, 2 bad usage or an
invalid workflow, 3 engine or storage error. Tracebacks only with ``--debug``.

The package holds one concept per module; the file of any ``fm`` command:

- ``run``: a workflow file in: ``fm validate``, ``schema``, ``run``, ``submit``,
  ``daemon`` (and preparing, waiting for and reporting an execution);
- ``inspect``: reading executions: ``fm ls``, ``show``, ``output``, ``wait``,
  ``logs``, ``queue``, ``workers``;
- ``tracing``: an execution in time: ``fm timeline``, ``trace``;
- ``dlq``: ``fm dlq`` and its commands;
- ``retry``: ``fm retry``;
- ``maintain``: store care: ``fm verify``, ``fm prune``;
- ``control``: ``fm signal``, ``pause``, ``resume``, ``cancel``, and ``fm token``;
- ``base``: the ``cli`` group, ``Ctx``, ``FmGroup`` (commands other packages add,
  such as ``fm tui``), shared options, and ``main()`` with its error mapping;
- ``render``: output helpers several commands share (``--json``, times,
  tracebacks).

Each imports heavy modules only inside the functions that use them (base.py).
"""

from __future__ import annotations

# Importing a command module registers its commands on ``cli``.
from fm_local.cli import control, dlq, explain, inspect, maintain, retry, run, tracing  # noqa: F401
from fm_local.cli.base import (
    PLUGIN_GROUP,
    Ctx,
    FmGroup,
    cli,
    json_option,
    main,
    pass_ctx,
    plugin_commands,
    read_only,
)

__all__ = [
    "PLUGIN_GROUP",
    "Ctx",
    "FmGroup",
    "cli",
    "json_option",
    "main",
    "pass_ctx",
    "plugin_commands",
    "read_only",
]

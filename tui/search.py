"""The executions search (``/``): one query string, matched against each
execution's id, workflow, status and error text.

Words are separated by spaces (``"quoted text"`` is one word); every word must
match (AND), case-insensitively, as a substring. A word may name its field:

- ``status:failed`` (``s:``), ``workflow:batch`` (``wf:``, ``w:``), ``id:3f2a``,
  ``error:ZeroDivision`` (``err:``, ``e:``; the error's code, message and traceback);
- any other word matches any of the four fields.

A prefix that is not one of these is part of the text (``KeyError:`` searches
for that text), so an error message with a colon in it can be searched as is.
The words become one SQL condition in fm_local/store/browse.py.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

FIELDS = {
    "status": "status",
    "s": "status",
    "workflow": "workflow",
    "wf": "workflow",
    "w": "workflow",
    "id": "id",
    "error": "error",
    "err": "error",
    "e": "error",
}


@dataclass(frozen=True)
class Term:
    """One word: its text, and the field it must match (None: any)."""

    text: str
    field: str | None = None


def parse(query: str) -> list[Term]:
    """The words of ``query`` (a quote left open is taken literally)."""
    try:
        words = shlex.split(query)
    except ValueError:
        words = query.split()
    terms = []
    for word in words:
        prefix, colon, rest = word.partition(":")
        if colon and prefix.lower() in FIELDS and rest:
            terms.append(Term(rest, FIELDS[prefix.lower()]))
        elif word:
            terms.append(Term(word))
    return terms

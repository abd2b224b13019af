"""Refresh a DataTable in place: same rows → only changed cells are updated;
different rows → rebuilt, keeping the cursor on the same row key and the scroll
position. So a refresh every second neither flickers nor loses the user's place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from textual.binding import Binding, BindingType
from textual.widgets import DataTable

# j / k move the cursor in every table, as down / up do; home / end to the first and
# last row (DataTable's own home / end scroll sideways: our tables are row tables).
# A table's BINDINGS; Textual adds those of DataTable.
VI_KEYS: list[BindingType] = [
    Binding("j", "cursor_down", "Down", show=False),
    Binding("k", "cursor_up", "Up", show=False),
    Binding("home", "scroll_top", "First row", show=False),
    Binding("end", "scroll_bottom", "Last row", show=False),
]


def row_keys(table: DataTable[Any]) -> list[str]:
    return [str(row.key.value) for row in table.ordered_rows]


def cursor_key(table: DataTable[Any]) -> str | None:
    keys = row_keys(table)
    row = table.cursor_row
    return keys[row] if 0 <= row < len(keys) else None


def sync_rows(
    table: DataTable[Any],
    rows: Sequence[tuple[str, Sequence[Any]]],
    heights: Mapping[str, int] | None = None,
) -> None:
    """Show ``rows`` (key, cells); ``heights`` gives the rows taller than one line
    (a row's height must follow from its key)."""
    keys = [key for key, _ in rows]
    if keys == row_keys(table):
        columns = list(table.columns)
        for key, cells in rows:
            old = table.get_row(key)
            for column, new, before in zip(columns, cells, old, strict=False):
                if new != before:
                    table.update_cell(key, column, new, update_width=True)
        return
    keep = cursor_key(table)
    scroll_x, scroll_y = table.scroll_x, table.scroll_y
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key, height=(heights or {}).get(key, 1))
    if keep is not None and keep in keys:
        table.move_cursor(row=keys.index(keep), scroll=False)
    # The new rows are measured on the next refresh; scroll back after it.
    table.call_after_refresh(table.scroll_to, scroll_x, scroll_y, animate=False)

"""The Textual terminal UI for fm_local (``fm tui``): not built yet (issue 6).

The engine (``fm_local``) never imports this package; the UI reads the SQLite
file and writes signal rows, like every other client.
"""

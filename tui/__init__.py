"""The Textual terminal UI of fm_local (``fm tui``).

It is a client like any other: it reads the SQLite file (read-only connections,
in background threads) and sends signals by inserting ``signals`` rows. The
engine (``fm_local``) never imports this package or Textual.

Layout: ``data`` reads, ``control`` writes signals, ``records`` are the values
read, ``messages`` carry them to the UI, ``screens/`` and ``widgets/`` draw them.
"""

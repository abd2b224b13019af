"""Node types: one module each. Worker-side types (python, http, shell) run in worker
processes via :mod:`fm_local.nodes.runners`; the others are evaluated by the
supervisor (they are pure expressions or timers and hold no worker)."""

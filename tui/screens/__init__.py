"""Screens: one per area of the UI (executions, detail, queue, resources) plus
the help and the dialogs. Each polls its own data while it is shown."""

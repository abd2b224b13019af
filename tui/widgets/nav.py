"""The tab bar at the top of every screen: 1 Executions, 2 Detail, 3 Queue,
4 Resources. Clicking a tab does what its number key does."""

from __future__ import annotations

from textual.widgets import Tab, Tabs

MODES = (
    ("executions", "1 Executions"),
    ("detail", "2 Detail"),
    ("queue", "3 Queue"),
    ("resources", "4 Resources"),
)


class ScreenTabs(Tabs):
    """Tabs that name the screens; the active one is the screen it sits on."""

    can_focus = False  # focus stays on the screen's table; keys 1-4 switch

    def __init__(self, mode: str) -> None:
        super().__init__(*[Tab(label, id=m) for m, label in MODES], active=mode)
        self.mode = mode

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        target = event.tab.id
        if target is None or target == self.mode:
            return
        self.active = self.mode  # this screen's tab stays lit on this screen
        self.call_later(self.app.run_action, f"show('{target}')")

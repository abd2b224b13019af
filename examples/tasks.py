"""Python tasks used by the example workflows in this folder.

Each function is an ordinary Python function: keyword arguments in, JSON out.
A parameter named ``ctx`` receives the node context (execution id, node path,
attempt, trace id, idempotency key, branch, and a ``log`` callable).
"""

from __future__ import annotations

import time


def get_users(count: int = 6) -> list[dict]:
    return [
        {
            "id": i,
            "name": f"user{i}",
            "email": f"user{i}@example.com",
            "region": "eu" if i % 2 else "us",
        }
        for i in range(1, count + 1)
    ]


def fetch_region(users: list[dict], region: str, ctx=None) -> dict:
    """Pretend to call a regional API: takes a moment, like real I/O."""
    if ctx is not None:
        ctx.log(
            f"branch {ctx.branch['id'] if ctx.branch else '-'} fetching {region} ({ctx.traceId})"
        )
    time.sleep(0.3)
    mine = [u for u in users if u["region"] == region]
    return {"count": len(mine), "emails": [u["email"] for u in mine]}


def score(users: list[dict], ctx=None) -> dict:
    time.sleep(0.3)
    return {"count": len(users), "emails": [], "score": sum(u["id"] for u in users)}


def check_inventory(order: dict) -> dict:
    time.sleep(0.2)
    return {"ok": all(item["qty"] <= 10 for item in order["items"]), "check": "inventory"}


def validate_payment(order: dict) -> dict:
    time.sleep(0.2)
    return {"ok": order["payment"]["amount"] > 0, "check": "payment"}


def check_shipping(order: dict) -> dict:
    time.sleep(0.2)
    return {"ok": order["address"]["country"] in ("FR", "DE", "US"), "check": "shipping"}


def process_order(order: dict, ctx=None) -> dict:
    if ctx is not None:
        ctx.log(f"processing order {order['id']} (idempotency key {ctx.idempotencyKey})")
    return {"orderId": order["id"], "status": "processed"}


def reject_order(order: dict, inventory: dict, payment: dict, shipping: dict) -> dict:
    failed = [c["check"] for c in (inventory, payment, shipping) if not c["ok"]]
    return {"orderId": order["id"], "status": "rejected", "failedChecks": failed}


def prepare_release(version: str) -> dict:
    time.sleep(0.3)
    return {"version": version, "artifacts": [f"app-{version}.tar.gz"]}


def release(plan: dict, approver: str | None = None) -> dict:
    return {"released": True, "version": plan["version"], "approvedBy": approver}

"""Python tasks of the failure-policy examples (parallel_with_fallback.json,
loop_collect.json, fail_fast_validation.json).

Each function is an ordinary Python function: keyword arguments in, JSON out. A
failure is an exception: ``NodeError(message, code)`` chooses the error code.
"""

from __future__ import annotations

import time

from fm_local import NodeError


def weather_api(source: str, city: str, delay_ms: int = 200, fail: bool = False, ctx=None) -> dict:
    """A pretend weather API: answers after ``delay_ms``, or fails when ``fail``."""
    if ctx is not None:
        ctx.log(f"{source}: asking for {city} ({delay_ms} ms)")
    time.sleep(delay_ms / 1000.0)
    if fail:
        raise ConnectionError(f"{source} API unreachable")  # error code NETWORK
    return {
        "source": source,
        "city": city,
        "forecast": {"tempC": 12 + len(city) % 7, "sky": "cloudy" if len(city) % 2 else "clear"},
        "latencyMs": delay_ms,
    }


def process_record(n: int, fail_every: int = 7) -> dict:
    """Every ``fail_every``-th record is corrupt (deterministically)."""
    time.sleep(0.02)
    if fail_every and n % fail_every == 0:
        raise NodeError(f"record {n} is corrupt", "INVALID_RECORD")
    return {"n": n, "square": n * n}


def check_inventory(order: dict, seconds: float = 2.0) -> dict:
    """A slow check (a remote warehouse lookup)."""
    time.sleep(seconds)
    short = [i["sku"] for i in order["items"] if i["qty"] > 10]
    if short:
        raise NodeError(f"out of stock: {', '.join(short)}", "OUT_OF_STOCK")
    return {"check": "inventory", "ok": True}


def validate_payment(order: dict) -> dict:
    """A fast check: fails at once for a declined payment."""
    time.sleep(0.1)
    payment = order["payment"]
    if payment["amount"] <= 0 or payment.get("declined"):
        raise NodeError(f"payment declined (amount {payment['amount']})", "PAYMENT_DECLINED")
    return {"check": "payment", "ok": True}


def check_shipping(order: dict, seconds: float = 2.0) -> dict:
    """A slow check (a carrier API)."""
    time.sleep(seconds)
    country = order["address"]["country"]
    if country not in ("FR", "DE", "US"):
        raise NodeError(f"no shipping to {country}", "NO_SHIPPING")
    return {"check": "shipping", "ok": True}


def process_order(order: dict, ctx=None) -> dict:
    if ctx is not None:
        ctx.log(f"processing order {order['id']} (idempotency key {ctx.idempotencyKey})")
    return {"orderId": order["id"], "status": "processed"}

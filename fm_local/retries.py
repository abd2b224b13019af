"""Retry decisions and back-off delays (SPEC §6): pure functions of the policy,
the error and the attempt number. tenacity's wait strategies compute the delay."""

from __future__ import annotations

from typing import Any

from tenacity import RetryCallState, wait_exponential, wait_fixed, wait_incrementing, wait_random

from fm_local.errors import FATAL, NON_RETRYABLE
from fm_local.model import RetryPolicy


def is_retryable(policy: RetryPolicy, error: dict[str, Any]) -> bool:
    code = error.get("code")
    if code == FATAL:
        return False  # FatalError means: never retry, whatever the policy lists
    if policy.retryable_errors is None:
        return code not in NON_RETRYABLE
    allowed = set(policy.retryable_errors)
    if code in allowed:
        return True
    details = error.get("details") or {}
    types = details.get("exceptionTypes") if isinstance(details, dict) else None
    return bool(types and allowed.intersection(types))


def _strategy(policy: RetryPolicy) -> Any:
    initial, cap = float(policy.initial_delay), float(policy.max_delay)
    if policy.backoff == "fixed":
        wait: Any = wait_fixed(initial)
    elif policy.backoff == "linear":
        wait = wait_incrementing(start=initial, increment=initial, max=cap)
    else:
        wait = wait_exponential(
            multiplier=initial, exp_base=policy.backoff_multiplier, min=0, max=cap
        )
    if policy.jitter:
        wait = wait + wait_random(0, max(initial, 1.0))
    return wait


def retry_delay_ms(
    policy: RetryPolicy,
    attempt: int,
    error: dict[str, Any] | None = None,
) -> int:
    """Delay before attempt ``attempt + 1`` after attempt ``attempt`` failed."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    delay = float(_strategy(policy)(state))
    if policy.backoff != "fixed" and not policy.jitter:
        delay = min(delay, float(policy.max_delay))
    ra = retry_after_ms(error)
    if ra is not None:
        delay = max(delay, ra)
    return max(0, int(delay))


def retry_after_ms(error: dict[str, Any] | None) -> float | None:
    """The least delay an error asks for (HTTP Retry-After), if any."""
    details = (error or {}).get("details")
    for d in (details, details.get("data") if isinstance(details, dict) else None):
        if isinstance(d, dict) and isinstance(d.get("retryAfterMs"), (int, float)):
            return float(d["retryAfterMs"])
    return None

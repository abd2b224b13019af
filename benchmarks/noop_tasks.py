"""No-op node functions for the benchmarks."""


def noop(i: int = 0) -> int:
    return i


def sleepy(s: float = 0.2) -> float:
    import time

    time.sleep(s)
    return s


def stamp() -> float:
    """When the node's code started (for the submit-to-start latency)."""
    import time

    return time.time()


def burn(n: int = 300_000) -> int:
    """CPU-bound work (about 20 ms here): the same for fm and for a plain pool."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total

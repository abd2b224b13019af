"""No-op node functions for the benchmarks."""


def noop(i: int = 0) -> int:
    return i

"""Pareto front of (accuracy to maximise, cost to minimise) pairs."""
from __future__ import annotations

from typing import Sequence


def pareto_indices(f1: Sequence[float], cost: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points, ordered by increasing cost (then decreasing F1).

    Point j dominates point i when f1[j] >= f1[i] and cost[j] <= cost[i] with at least one strict. Points with
    identical (f1, cost) do not dominate each other, so all of them stay on the front.
    """
    if len(f1) != len(cost):
        raise ValueError(f"f1 and cost need the same length, got {len(f1)} and {len(cost)}")
    order = sorted(range(len(f1)), key=lambda i: (cost[i], -f1[i]))
    front: list[int] = []
    best_f1 = float("-inf")
    for position, i in enumerate(order):
        if f1[i] > best_f1:
            front.append(i)
            best_f1 = f1[i]
        elif f1[i] == best_f1 and front and (f1[front[-1]], cost[front[-1]]) == (f1[i], cost[i]):
            # an exact tie with the last front point: neither dominates the other
            front.append(i)
    return front

"""Packing sequences into rows: the one bin-packing every packed collate uses (language-model sequences, preference
pairs with a shared prompt, labelled texts for an encoder)."""

from __future__ import annotations

from collections.abc import Sequence


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows whose total stays within `capacity`, longest first."""
    rows: list[list[int]] = []
    loads: list[int] = []
    for item in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        n = lengths[item]
        for index, load in enumerate(loads):
            if load + n <= capacity:
                rows[index].append(item)
                loads[index] += n
                break
        else:
            rows.append([item])
            loads.append(n)
    return rows

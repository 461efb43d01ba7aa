"""Style names -> style vectors. Styles are named at any level of the corpus tree: `baroque`, `bach`, `baroque/bach`.

The model's style input is a vector over the leaf slots (`manifest["styles"]`). A name stands for the average of the
one-hots of the leaves under it (the paper's period = average of its composers), and a blend `bach=0.5 chopin=0.5`
is the weighted sum of those, normalised to sum to 1.
"""

from __future__ import annotations

import torch


class StyleError(ValueError):
    """An unknown or malformed style name; the message lists the valid ones."""


def parse_spec(spec: str) -> tuple[str, float]:
    """`NAME` or `NAME=WEIGHT` -> (name, weight)."""
    name, _, weight = spec.partition("=")
    name = name.strip().lower()
    if not name:
        raise StyleError(f"empty style name in {spec!r}")
    if not weight:
        return name, 1.0
    try:
        w = float(weight)
    except ValueError:
        raise StyleError(f"style weight in {spec!r} is not a number") from None
    if w < 0:
        raise StyleError(f"style weight in {spec!r} is negative")
    return name, w


def valid_names(levels: dict[str, list[int]]) -> list[str]:
    return sorted(levels)


def style_vector(specs: list[str], styles: list[str], levels: dict[str, list[int]]) -> torch.Tensor:
    """Style specs (`["baroque", "chopin=0.3"]`) -> (S,) float32 mixture over the leaf slots, summing to 1."""
    if not specs:
        raise StyleError("no style given; valid names: " + ", ".join(valid_names(levels)))
    vec = torch.zeros(len(styles), dtype=torch.float32)
    for spec in specs:
        name, weight = parse_spec(spec)
        leaves = levels.get(name)
        if leaves is None:
            raise StyleError(f"unknown style {name!r}; valid names: " + ", ".join(valid_names(levels)))
        vec[leaves] += weight / len(leaves)
    total = float(vec.sum())
    if total <= 0:
        raise StyleError(f"style weights {specs} sum to zero")
    return vec / total


def top_level_names(styles: list[str], levels: dict[str, list[int]]) -> list[str]:
    """The first level of the style tree (periods, for a period/composer corpus), in vocabulary order."""
    seen: list[str] = []
    for s in styles:
        top = s.split("/")[0]
        if top in levels and top not in seen:
            seen.append(top)
    return seen

"""The style tree of a corpus, and style names -> style vectors.

Styles are named at any level of the corpus tree: `baroque`, `bach`, `baroque/bach`. The model's style input is a
vector over the leaf slots (`StyleTree.styles`, e.g. "baroque/bach"). A name stands for the average of the one-hots of
the leaves under it (the paper's period = the average of its composers), and a blend `bach=0.5 chopin=0.5` is the
weighted sum of those, normalised to sum to 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch


class StyleError(ValueError):
    """An unknown or malformed style name; the message lists the valid ones."""


def slug(names: str | Iterable[str]) -> str:
    """A style name or a list of style specs -> a file and anchor name: lower case, specs joined by "+", each run of
    other characters than [a-z0-9=.+-] one "-" (`baroque/bach` -> `baroque-bach`, [`bach=0.5`, `chopin=0.5`] ->
    `bach=0.5+chopin=0.5`); "style" when nothing is left. Generation names its output folders with it too."""
    joined = names if isinstance(names, str) else "+".join(names)
    return re.sub(r"[^a-z0-9=.+-]+", "-", joined.lower()).strip("-") or "style"


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
    if not math.isfinite(w):  # nan or inf would turn the whole style vector into nan: silent or noise pieces
        raise StyleError(f"style weight in {spec!r} is not a finite number")
    if w < 0:
        raise StyleError(f"style weight in {spec!r} is negative")
    return name, w


@dataclass(frozen=True)
class StyleTree:
    """The leaf styles of a corpus (sorted "period/composer" paths, one model input slot each) and every name above.

    `levels` maps every name a user may give (each path prefix, and each path component on its own) to the leaf slots
    under it; `level_names` lists the component names per depth (periods, then composers).
    """

    styles: tuple[str, ...]
    levels: dict[str, list[int]]
    level_names: tuple[tuple[str, ...], ...]

    @classmethod
    def from_leaves(cls, styles: list[str]) -> StyleTree:
        levels: dict[str, set[int]] = {}
        depth_names: list[set[str]] = []
        for sid, style in enumerate(styles):
            parts = style.split("/")
            for d, name in enumerate(parts):
                levels.setdefault(name, set()).add(sid)
                levels.setdefault("/".join(parts[: d + 1]), set()).add(sid)
                if len(depth_names) <= d:
                    depth_names.append(set())
                depth_names[d].add(name)
        return cls(tuple(styles), {k: sorted(v) for k, v in sorted(levels.items())},
                   tuple(tuple(sorted(n)) for n in depth_names))

    @property
    def num_styles(self) -> int:
        return len(self.styles)

    def valid_names(self) -> list[str]:
        return sorted(self.levels)

    def vector(self, specs: list[str]) -> torch.Tensor:
        """Style specs (`["baroque", "chopin=0.3"]`) -> (S,) float32 mixture over the leaf slots, summing to 1."""
        if not specs:
            raise StyleError("no style given; valid names: " + ", ".join(self.valid_names()))
        vec = torch.zeros(self.num_styles, dtype=torch.float32)
        for spec in specs:
            name, weight = parse_spec(spec)
            leaves = self.levels.get(name)
            if leaves is None:
                raise StyleError(f"unknown style {name!r}; valid names: " + ", ".join(self.valid_names()))
            vec[leaves] += weight / len(leaves)
        total = float(vec.sum())
        if not math.isfinite(total):
            raise StyleError(f"style weights {specs} are too large to add up; use smaller ones (they are normalised)")
        if total <= 0:
            raise StyleError(f"style weights {specs} sum to zero")
        return vec / total

    def top_level(self) -> list[str]:
        """The first level of the tree (periods, for a period/composer corpus), in slot order."""
        seen: list[str] = []
        for s in self.styles:
            top = s.split("/")[0]
            if top in self.levels and top not in seen:
                seen.append(top)
        return seen

    def leaf(self, name: str) -> str | None:
        """The leaf slot a name stands for when it stands for exactly one, else None."""
        leaves = self.levels.get(name.strip().lower())
        return self.styles[leaves[0]] if leaves is not None and len(leaves) == 1 else None

    def to_json(self) -> dict:
        return {"styles": list(self.styles), "levels": self.levels,
                "level_names": [list(n) for n in self.level_names]}

"""`python -m deepj.bench <name> [args ...]`: run the benchmark in module `deepj.bench.<name>`.

Each benchmark is a module of this package with a `main(argv) -> int`; the list of names is read from the package
folder, so a new module is available as soon as it exists. `python -m deepj.bench` alone lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import deepj.bench


def available() -> list[str]:
    """Benchmark module names in deepj/bench/ (not this dispatcher, not private modules)."""
    return sorted(m.name for m in pkgutil.iter_modules(deepj.bench.__path__)
                  if not m.name.startswith("_") and not m.ispkg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    usage = f"usage: python -m deepj.bench <name> [args ...]; available: {', '.join(names) or '(none)'}"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        for name in names:
            print(f"  python -m deepj.bench {name} --help")
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"error: unknown benchmark {name!r}; available: {', '.join(names) or '(none)'}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"deepj.bench.{name}")
    if not callable(getattr(module, "main", None)):
        print(f"error: deepj/bench/{name}.py has no main(argv) function", file=sys.stderr)
        return 2
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

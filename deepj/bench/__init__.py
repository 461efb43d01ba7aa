"""Benchmarks, one module each, run as `python -m deepj.bench <name> ...` (see deepj/bench/__main__.py).

Every benchmark module defines `main(argv) -> int` and prints, as its last line, one JSON object with its result.
"""

"""Benchmarks behind `deeplog-siem bench NAME [--json]`.

Each module in this package exposes `add_arguments(parser)` and `run(args, progress) -> dict`; the dict is
printed as one JSON object on the last line with `--json`. Targets live here and in BENCHMARKS.md, never in
timed tests.
"""

BENCHES = ("templater", "parsing", "keymodel", "pipeline", "anomalydocs", "scale")

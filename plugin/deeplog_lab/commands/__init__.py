"""The lab's commands of `deeplog-siem`: evaluations, the generator, benchmarks, the demo and its server.

Contract: `register(sub, wanted)` adds the parsers of the lab commands that `wanted` names (all of them for
the full parser) to the top-level subparsers; `register_workflow(wsub, wanted)` adds `hdfs` to the runtime's
`workflow` group. The runtime names this module in its command table as a string and imports it only when
one of these commands runs (or the full parser is built), so the runtime never depends on the lab.
Each command's module is imported only when that command is wanted: `bench` imports every benchmark.
"""

from __future__ import annotations

import importlib

from deeplog_siem.commands import Subparsers, Wanted

# command -> the module of this package that registers it (and the other commands it holds)
_OWNERS = {
    "evaluate": "evaluation",
    "evaluate-params": "evaluation",
    "generate": "evaluation",
    "evaluate-workflows": "evaluation",
    "evaluate-feedback": "evaluation",
    "server": "cluster",
    "replay": "cluster",
    "demo": "cluster",
    "bench": "bench",
}


def register(sub: Subparsers, wanted: Wanted) -> None:
    for name, module in _OWNERS.items():
        if wanted.wants(name) and name not in sub.choices:
            importlib.import_module(f"{__name__}.{module}").register(sub)


def register_workflow(wsub: Subparsers, wanted: Wanted) -> None:
    from .workflow import register_hdfs

    register_hdfs(wsub)

"""drain_state: the parse tree and clusters of a drain3 `Drain` as plain data, and a `Drain` rebuilt from it.

Contract:
- `export_drain(drain) -> DrainState`: the drain's cluster counter, its clusters in the drain's own order
  (id, size, template tokens) and its prefix tree as nested lists
  `[[[token, subtree], ...], [cluster id, ...]]` (children in the drain's order). Plain ints, strings and
  lists only, so the caller can write it as JSON.
- `restore_drain(drain, state)`: replaces the clusters, tree and counter of a freshly built `drain` with
  those of `state`. The tree's tokens are converted with `str` and its ids with `int`; a tree that names a
  cluster `state` does not hold, or a counter below the highest cluster id, raises ValueError (a tree of
  the wrong shape TypeError or ValueError), and then `drain` is left as it was. The drain must not bound
  its cluster count (`max_clusters=None`): its clusters are a plain dict.
- `ClusterState.template`: the template text drain3 gives for those tokens (`LogCluster.get_template`).

Why this module exists: drain3's public API learns (`add_log_message`), matches (`match`) and lists
clusters, but its own persistence pickles the whole `Drain` object with jsonpickle, which ties a saved
state to drain3's class layout and loads code named in the file. The templater keeps its state as plain
JSON instead, and that needs what drain3 does not publish: `Drain.root_node`, `Drain.id_to_cluster` (cluster
id -> `LogCluster`), `Drain.clusters_counter` (the last id handed out; the next cluster gets the one after),
`Node.key_to_child_node`, `Node.cluster_ids`, and the `LogCluster` fields `cluster_id`, `size`,
`log_template_tokens`. This is the only module that reads or writes them (pinned drain3 0.9.11);
tests/test_adapters.py checks each one, so a drain3 that changes them fails there, loudly, naming this file.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from drain3.drain import Drain, LogCluster, Node

# drain3 has no __version__; the installed distribution's version is what the templater state records.
try:
    DRAIN3_VERSION: str = importlib.metadata.version("drain3")
except importlib.metadata.PackageNotFoundError:  # drain3 imported from a source tree, not installed
    DRAIN3_VERSION = "unknown"


@dataclass(frozen=True, slots=True)
class ClusterState:
    cluster_id: int
    size: int  # messages learned into the cluster
    tokens: tuple[str, ...]  # the template's tokens

    @property
    def template(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True, slots=True)
class DrainState:
    clusters_counter: int  # the highest cluster id handed out so far
    clusters: tuple[ClusterState, ...]  # in the drain's order
    tree: list[Any]  # [[[token, subtree], ...], [cluster id, ...]], from the root


def export_drain(drain: Drain) -> DrainState:
    def node(n: Node) -> list[Any]:
        return [[[tok, node(ch)] for tok, ch in n.key_to_child_node.items()], list(n.cluster_ids)]

    return DrainState(
        clusters_counter=drain.clusters_counter,
        clusters=tuple(
            ClusterState(c.cluster_id, c.size, tuple(c.log_template_tokens))
            for c in drain.id_to_cluster.values()
        ),
        tree=node(drain.root_node),
    )


def restore_drain(drain: Drain, state: DrainState) -> None:
    if drain.max_clusters is not None:
        raise ValueError("restore_drain: a drain with max_clusters keeps an LRU cache, not supported")
    clusters: dict[int, LogCluster] = {}
    for cs in state.clusters:
        c = LogCluster(list(cs.tokens), cs.cluster_id)
        c.size = cs.size
        clusters[cs.cluster_id] = c

    def node(data: Any) -> Node:
        children, ids = data
        n = Node()
        n.key_to_child_node = {str(tok): node(ch) for tok, ch in children}
        n.cluster_ids = [int(i) for i in ids]
        for i in n.cluster_ids:
            if i not in clusters:
                raise ValueError(f"tree refers to unknown cluster {i}")
        return n

    root = node(state.tree)
    if clusters and state.clusters_counter < max(clusters):
        raise ValueError("clusters_counter below the highest cluster id")
    drain.id_to_cluster = clusters
    drain.root_node = root
    drain.clusters_counter = state.clusters_counter


def remove_cluster(drain: Drain, cluster_id: int) -> None:
    """Take one cluster out of the drain: its entry and every leaf that lists it."""
    drain.id_to_cluster.pop(cluster_id, None)
    stack = [drain.root_node]
    while stack:
        n = stack.pop()
        if cluster_id in n.cluster_ids:
            n.cluster_ids = [i for i in n.cluster_ids if i != cluster_id]
        stack.extend(n.key_to_child_node.values())

"""workload: seeded generator of OpenStack-like (nova) logs of concurrent VM tasks, with labelled anomalies.

Contract: `generate_workload(n_tasks, seed, anomaly_rate, slowdowns, path_rate) -> Workload`: raw log lines
in the loghub OpenStack format (`nova-compute.log.<date>_<time> <date> <time.ms> <pid> <LEVEL> <component>
[req-<uuid> <user> <project> - - -] [instance: <uuid>] <message>`), sorted by time, plus one label per
injected anomaly and the true task graphs. `generate(...)` is the same as `(lines, labels)`.

- A session is one instance (its id is in `[instance: ...]`, `formats.OPENSTACK_SESSION_REGEX`): `create`,
  optionally `stop` then `start`, optionally `migrate`, then `delete`. Each task is one request: its lines
  carry one `req-<uuid>`, the task id the labels use. Sessions start as a Poisson process and interleave.
- A task is a fixed sequence of steps (`TASKS`); a step emits one or more lines. A step's first line comes
  `duration` after the previous line of the session: lognormal around the step's median, times a slowly
  drifting system load shared by all tasks (so recent timings of a step predict the next ones, as on a real
  host); further lines of a step follow within milliseconds. "Took N seconds" lines report the durations.
- Injection (test data), per task, at most one anomaly: with probability `anomaly_rate` a performance anomaly
  (one timed step, chosen uniformly, lasts `k` times longer, `k` drawn uniformly from `slowdowns`); else with
  probability `path_rate` an execution-path anomaly: a step `missing`, `repeated` (its lines emitted twice)
  or `foreign` (a step of another task type inserted after a step of this one). Label: a JSON-safe dict with
  `task_id`, `session`, `task_type`, `kind` (slowdown, missing, repeated, foreign), `step`, `factor`
  (slowdowns) and `lines` (0-based indices of the affected lines in `lines`; for `missing`, the line that
  follows the gap).
- Drift (`drift_rate`, default 0): that share of the `delete` tasks without a path anomaly gets a new,
  legitimate step (`DRIFT_STEP`) after its request; such tasks are listed with `drifted: True`, not labelled.
- Same arguments, same output (a private `random.Random(seed)`; no wall clock).
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str
    lines: tuple[tuple[str, str], ...]  # (component, message format) per line
    median_s: float  # median duration before the step's first line (0: the session's first event)
    sigma: float = 0.2  # lognormal shape of that duration
    timed: bool = True  # a performance anomaly may slow this step down (not think time, not ms bookkeeping)


_MGR = "nova.compute.manager"
_DRV = "nova.virt.libvirt.driver"
_CLM = "nova.compute.claims"

# Messages follow nova's (loghub OpenStack); {fields} are filled per task, "Took" values from the timings.
TASKS: dict[str, tuple[Step, ...]] = {
    "create": (
        Step(
            "claim",
            (
                (_CLM, "Attempting claim: memory {mem} MB, disk {disk} GB, vcpus {vcpus} CPU"),
                (_CLM, "Total memory: 64172 MB, used: 512.00 MB"),
                (_CLM, "memory limit: 96258.00 MB, free: 95746.00 MB"),
                (_CLM, "Total disk: 15 GB, used: 0.00 GB"),
                (_CLM, "disk limit not specified, defaulting to unlimited"),
                (_CLM, "Total vcpu: 16 VCPU, used: 0.00 VCPU"),
                (_CLM, "vcpu limit not specified, defaulting to unlimited"),
                (_CLM, "Claim successful"),
            ),
            0.0,
            timed=False,
        ),
        Step("image", ((_DRV, "Creating image"),), 0.6, 0.2),
        Step(
            "spawn",
            (
                (_MGR, "VM Started (Lifecycle Event)"),
                (_MGR, "VM Paused (Lifecycle Event)"),
                (_MGR, "During sync_power_state the instance has a pending task (spawning). Skip."),
            ),
            8.0,
            0.15,
        ),
        Step(
            "boot",
            (
                (_MGR, "VM Resumed (Lifecycle Event)"),
                (_DRV, "Instance spawned successfully."),
                (_MGR, "Took {spawn_s:.2f} seconds to spawn the instance on the hypervisor."),
            ),
            1.5,
            0.2,
        ),
        Step("build", ((_MGR, "Took {build_s:.2f} seconds to build instance."),), 0.5, 0.2),
    ),
    "stop": (
        Step(
            "request",
            (
                (
                    _MGR,
                    "Stopping instance; current vm_state: active, current task_state: powering-off, "
                    "current DB power_state: 1, current VM power_state: 1",
                ),
            ),
            60.0,
            0.4,
            timed=False,
        ),
        Step(
            "shutdown",
            (
                (_DRV, "Instance shutdown successfully after {shutdown_n} seconds."),
                (_MGR, "VM Stopped (Lifecycle Event)"),
            ),
            3.0,
            0.15,
        ),
    ),
    "start": (
        Step("request", ((_MGR, "Powering on instance"),), 60.0, 0.4, timed=False),
        Step(
            "power_on",
            ((_MGR, "VM Started (Lifecycle Event)"), (_MGR, "VM Resumed (Lifecycle Event)")),
            2.5,
            0.15,
        ),
        Step("report", ((_DRV, "Instance running successfully."),), 0.4, 0.2),
    ),
    "migrate": (
        Step("request", ((_MGR, "Starting migration to host {host}"),), 90.0, 0.4, timed=False),
        Step(
            "copy",
            ((_DRV, "Copying disk of {disk} GB to {host}"),),
            1.0,
            0.2,
        ),
        Step("transfer", ((_DRV, "Migration to {host} finished successfully"),), 6.0, 0.15),
        Step(
            "activate",
            (
                (_MGR, "VM Started (Lifecycle Event)"),
                (_MGR, "Took {migrate_s:.2f} seconds to migrate the instance."),
            ),
            2.0,
            0.15,
        ),
    ),
    "delete": (
        Step("request", ((_MGR, "Terminating instance"),), 90.0, 0.4, timed=False),
        Step("destroy", ((_DRV, "Instance destroyed successfully."),), 0.9, 0.2),
        Step(
            "files",
            (
                (_DRV, "Deleting instance files /var/lib/nova/instances/{instance}_del"),
                (_DRV, "Deletion of /var/lib/nova/instances/{instance}_del complete"),
            ),
            0.3,
            0.2,
        ),
        Step(
            "report",
            ((_MGR, "Took {destroy_s:.2f} seconds to destroy the instance on the hypervisor."),),
            0.05,
            0.2,
            timed=False,
        ),
        Step(
            "network", ((_MGR, "Took {network_s:.2f} seconds to deallocate network for instance."),), 1.0, 0.2
        ),
    ),
}

# Drift (`drift_rate`): a new legitimate step in `delete` tasks after the request, as when a newer nova stops
# a running instance before destroying it. Its line is a known one (the `stop` task's), so the key model can
# learn the new order from feedback; a brand-new message would be an unseen key until retraining.
DRIFT_STEP = Step("power_off", ((_MGR, "VM Stopped (Lifecycle Event)"),), 0.8, 0.2)

# "Took" values: the time from the first line of the first step named to the line that reports it.
_TOOK_FROM = {"spawn_s": "image", "build_s": "claim", "migrate_s": "copy", "destroy_s": "destroy"}
FLAVORS = ((512, 1, 1, 0.25), (2048, 20, 1, 0.4), (4096, 40, 2, 0.35))  # memory MB, disk GB, vcpus, share
HOSTS = tuple(f"10.11.10.{i}" for i in range(11, 19))  # compute hosts, by address (masked as <IP>)
PATH_KINDS = ("missing", "repeated", "foreign")
_HEADER_DATE = "2017-05-16"
_LOG_START = datetime(2017, 5, 16, 0, 0, 0, tzinfo=UTC)
_USER, _PROJECT = "113d3a99c3da401fbd62cc2caa5b96d2", "54fdadf51f95476fb0ed4c7e1d23bd6d"


def task_graphs() -> dict[str, dict[str, Any]]:
    """The true workflow of each task type: steps in order, their lines, and the edges between lines.

    Lines are named `step:i`; within a task the graph is a chain (the generator emits a task's lines in one
    order). `sessions` gives the order tasks take within an instance's session."""
    graphs: dict[str, dict[str, Any]] = {}
    for name, steps in TASKS.items():
        nodes = [f"{s.name}:{i}" for s in steps for i in range(len(s.lines))]
        templates = {f"{s.name}:{i}": msg for s in steps for i, (_, msg) in enumerate(s.lines)}
        graphs[name] = {
            "steps": [s.name for s in steps],
            "nodes": nodes,
            "templates": templates,
            "edges": list(zip(nodes, nodes[1:], strict=False)),
            "timed_steps": [s.name for s in steps if s.timed],
        }
    graphs["session"] = {
        "nodes": ["create", "stop", "start", "migrate", "delete"],
        "edges": [
            ["create", "stop"],
            ["create", "migrate"],
            ["create", "delete"],
            ["stop", "start"],
            ["start", "migrate"],
            ["start", "delete"],
            ["migrate", "delete"],
        ],
    }
    return graphs


@dataclass
class Workload:
    lines: list[str]
    labels: list[dict[str, Any]]
    graphs: dict[str, dict[str, Any]]
    tasks: list[dict[str, Any]] = field(default_factory=list)  # every task: task_id, session, type, lines

    def write(self, log_path: str | Path, labels_path: str | Path) -> None:
        Path(log_path).write_text("".join(line + "\n" for line in self.lines), encoding="utf-8")
        Path(labels_path).write_text(
            "".join(json.dumps(lab, sort_keys=True) + "\n" for lab in self.labels), encoding="utf-8"
        )


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _session_plan(rng: random.Random) -> list[str]:
    plan = ["create"]
    if rng.random() < 0.3:
        plan += ["stop", "start"]
    if rng.random() < 0.2:
        plan.append("migrate")
    plan.append("delete")
    return plan


class _Load:
    """A slowly drifting multiplicative system load (log-AR(1) in time), shared by every task."""

    def __init__(self, rng: random.Random, horizon_s: float, tau_s: float = 1800.0, sd: float = 0.25):
        self.step_s = 60.0
        n = int(horizon_s / self.step_s) + 2
        a = math.exp(-self.step_s / tau_s)
        x, self.values = 0.0, []
        for _ in range(n):
            x = a * x + math.sqrt(1 - a * a) * sd * rng.gauss(0.0, 1.0)
            self.values.append(math.exp(x))

    def at(self, t: float) -> float:
        i = min(max(int(t / self.step_s), 0), len(self.values) - 1)
        return self.values[i]


def generate_workload(
    n_tasks: int,
    seed: int = 0,
    anomaly_rate: float = 0.0,
    slowdowns: Sequence[float] = (2, 3, 5),
    path_rate: float = 0.0,
    tasks_per_hour: float = 1200.0,
    drift_rate: float = 0.0,
) -> Workload:
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if not 0.0 <= anomaly_rate + path_rate <= 1.0 or anomaly_rate < 0 or path_rate < 0:
        raise ValueError(f"anomaly_rate + path_rate must be in [0, 1], got {anomaly_rate} + {path_rate}")
    if anomaly_rate > 0 and not slowdowns:
        raise ValueError("slowdowns: give at least one factor when anomaly_rate > 0")
    rng = random.Random(seed)
    plans: list[list[str]] = []
    total = 0
    while total < n_tasks:
        plan = _session_plan(rng)[: n_tasks - total]
        plans.append(plan)
        total += len(plan)
    sessions_per_s = tasks_per_hour / 3600.0 * len(plans) / n_tasks
    horizon = len(plans) / sessions_per_s + 4 * 3600.0
    load = _Load(rng, horizon)
    events: list[tuple[float, int, str, str, dict[str, Any]]] = []  # (t, seq, component, message, meta)
    labels: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    t_start = 0.0
    seq = 0
    other_types = list(TASKS)
    for plan in plans:
        t_start += rng.expovariate(sessions_per_s)
        instance = _uuid(rng)
        mem, disk, vcpus, _ = rng.choices(FLAVORS, weights=[f[3] for f in FLAVORS])[0]
        t = t_start
        pending_missing: list[int] | None = None
        for ti, ttype in enumerate(plan):
            req = "req-" + _uuid(rng)
            steps = list(TASKS[ttype])
            label: dict[str, Any] | None = None
            slow_step, factor, at = None, 1.0, -1
            u = rng.random()
            if u < anomaly_rate:
                timed = [s.name for s in steps if s.timed]
                slow_step, factor = rng.choice(timed), float(rng.choice(list(slowdowns)))
                label = {"kind": "slowdown", "step": slow_step, "factor": factor}
            elif u < anomaly_rate + path_rate:
                kind = rng.choice(PATH_KINDS)
                # The first step of a session's first task has no predecessor to be missing after.
                at = rng.randrange(1 if ti == 0 else 0, len(steps))
                if kind == "missing":
                    label = {"kind": kind, "step": steps[at].name}
                    del steps[at]
                elif kind == "repeated":
                    label = {"kind": kind, "step": steps[at].name}
                    steps.insert(at + 1, steps[at])
                else:
                    src = rng.choice([o for o in other_types if o != ttype])
                    foreign = rng.choice([s for s in TASKS[src] if s.median_s > 0])
                    label = {"kind": kind, "step": f"{src}.{foreign.name}"}
                    steps.insert(at + 1, foreign)
            drifted = False
            # Drawn only when asked for, so workloads without drift stay identical for a given seed.
            if drift_rate > 0 and ttype == "delete" and (label is None or label["kind"] == "slowdown"):
                drifted = rng.random() < drift_rate
                if drifted:
                    steps.insert(1, DRIFT_STEP)
            host = rng.choice(HOSTS)
            values: dict[str, Any] = {
                "mem": mem,
                "disk": disk,
                "vcpus": vcpus,
                "host": host,
                "instance": instance,
            }
            started: dict[str, float] = {}
            task_lines: list[int] = []
            affected: list[int] = []
            # After a missing step, the line that follows the gap: the first line of the step now at its
            # place, or (the task's last step missing) the session's next line, maybe the next task's.
            gap_at = at if label is not None and label["kind"] == "missing" else -1
            inserted = at + 1 if label is not None and label["kind"] in ("repeated", "foreign") else -1
            slowed = False
            for si, step in enumerate(steps):
                dur = 0.0
                if not (ti == 0 and si == 0) and step.median_s > 0:
                    dur = step.median_s * math.exp(step.sigma * rng.gauss(0.0, 1.0)) * load.at(t)
                if step.name == slow_step and not slowed:
                    dur *= factor
                    slowed = True
                t += dur
                started.setdefault(step.name, t)
                if step.name == "shutdown":
                    values["shutdown_n"] = max(1, round(dur))
                for li, (component, fmt) in enumerate(step.lines):
                    if li > 0:
                        t += rng.uniform(0.0005, 0.004)
                    for key, frm in _TOOK_FROM.items():
                        values[key] = t - started.get(frm, t)
                    values["network_s"] = dur
                    msg = fmt.format(**values)
                    events.append((t, seq, component, msg, {"session": instance, "req": req}))
                    task_lines.append(seq)
                    if pending_missing is not None:
                        pending_missing.append(seq)
                        pending_missing = None
                    if (
                        si == inserted
                        or (si == gap_at and li == 0)
                        or (slowed and (step.name == slow_step and li == 0 or "_s:" in fmt))
                    ):
                        affected.append(seq)
                    seq += 1
            if gap_at == len(steps):
                pending_missing = affected
            task = {"task_id": req, "session": instance, "task_type": ttype, "events": task_lines}
            if drifted:
                task["drifted"] = True
            tasks.append(task)
            if label is not None:
                label.update(task_id=req, session=instance, task_type=ttype, events=affected)
                labels.append(label)
    events.sort(key=lambda e: (e[0], e[1]))
    index = {e[1]: i for i, e in enumerate(events)}
    lines = []
    pid = 2931
    for ts, _, component, msg, meta in events:
        when = _LOG_START + timedelta(seconds=ts)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"
        lines.append(
            f"nova-compute.log.{_HEADER_DATE}_13:55:31 {stamp} {pid} INFO {component} "
            f"[{meta['req']} {_USER} {_PROJECT} - - -] [instance: {meta['session']}] {msg}"
        )
    for task in tasks:
        task["lines"] = sorted(index[s] for s in task.pop("events"))
    for lab in labels:
        lab["lines"] = sorted(index[s] for s in lab.pop("events"))
    return Workload(lines=lines, labels=labels, graphs=task_graphs(), tasks=tasks)


def generate(
    n_tasks: int,
    seed: int = 0,
    anomaly_rate: float = 0.0,
    slowdowns: Sequence[float] = (2, 3, 5),
    path_rate: float = 0.0,
) -> tuple[list[str], list[dict[str, Any]]]:
    """(log lines, labels of the injected anomalies); see `generate_workload` for the task graphs."""
    w = generate_workload(n_tasks, seed, anomaly_rate, slowdowns, path_rate)
    return w.lines, w.labels


def templated_events(tpl: Any, lines: Sequence[str], learn: bool) -> list[tuple[int, str, Any, float]]:
    """The generated lines through a templater (`templater.Templater`, `openstack` format): (line index,
    session id, parsed event, epoch seconds) for every line it parsed, in line order; a line without an
    instance id goes to session "-"."""
    import re

    from deeplog_siem.formats import OPENSTACK_SESSION_REGEX

    rx = re.compile(OPENSTACK_SESSION_REGEX)
    out = []
    for i, (line, ev) in enumerate(zip(lines, tpl.parse_many(lines, learn=learn), strict=True)):
        if ev is None:
            continue
        m = rx.search(line)
        hdr = tpl.header_fields(line)
        ts = datetime.fromisoformat(f"{hdr['date']} {hdr['time']}").timestamp()
        out.append((i, m.group(1) if m else "-", ev, ts))
    return out

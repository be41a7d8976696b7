"""cron: crontab(5) expressions, validated and turned into an APScheduler trigger.

Contract: `parse_cron(expr, key)` -> `CronSchedule` (the explicit values of each of the five fields) or a
`ConfigError` that starts with `key` and says what is wrong; `CronSchedule.trigger(tz)` -> the APScheduler 3
trigger that fires exactly when cron would. Semantics are crontab's, not APScheduler's: day of week 0 and 7
are Sunday, 1 is Monday, names `sun`..`sat` and `jan`..`dec`; `*`, `N`, `N-M`, lists and `/step` after
`*` or a range; `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`. When
neither day of month nor day of week starts with `*`, a day matching either fires (crontab's rule); otherwise
a day must match both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# crontab's numbering: 0 = Sunday. APScheduler 3 numbers from Monday, so the trigger gets names only.
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    first_name: int = 0  # the number of names[0]


FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, MONTHS, 1),
    # 7 is Sunday too (crontab(5)); folded to 0 once parsed.
    _Field("day of week", 0, 7, WEEKDAYS, 0),
)

_ITEM = re.compile(r"(?P<range>\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(?P<step>[0-9]+))?")


@dataclass(frozen=True)
class CronSchedule:
    """The five fields as sets of values (None: `*`, unrestricted); day of week 0..6 from Sunday.
    `either_day`: neither day field starts with `*`, so a day matching either one fires."""

    minute: frozenset[int] | None
    hour: frozenset[int] | None
    day: frozenset[int] | None
    month: frozenset[int] | None
    day_of_week: frozenset[int] | None
    either_day: bool = False

    def trigger(self, timezone: tzinfo) -> BaseTrigger:
        """The APScheduler trigger that fires when cron would run this expression."""
        from apscheduler.triggers.combining import OrTrigger
        from apscheduler.triggers.cron import CronTrigger

        def numbers(values: frozenset[int] | None) -> str:
            return "*" if values is None else ",".join(str(v) for v in sorted(values))

        def weekdays(values: frozenset[int] | None) -> str:
            return "*" if values is None else ",".join(WEEKDAYS[v] for v in sorted(values))

        common = {
            "minute": numbers(self.minute),
            "hour": numbers(self.hour),
            "month": numbers(self.month),
            "timezone": timezone,
        }
        if self.either_day:
            # crontab fires on a day that matches either field; APScheduler would need both.
            return OrTrigger(
                [
                    CronTrigger(day=numbers(self.day), day_of_week="*", **common),
                    CronTrigger(day="*", day_of_week=weekdays(self.day_of_week), **common),
                ]
            )
        return CronTrigger(day=numbers(self.day), day_of_week=weekdays(self.day_of_week), **common)


def parse_cron(expr: str, key: str) -> CronSchedule:
    """Validate a crontab(5) expression; a `ConfigError` starting with `key` says what is wrong."""
    text = expr.strip().lower()
    if text.startswith("@"):
        if text not in MACROS:
            raise ConfigError(f"{key}: unknown macro {expr.strip()!r} (use one of {', '.join(MACROS)})")
        text = MACROS[text]
    parts = text.split()
    if len(parts) != 5:
        raise ConfigError(
            f"{key}: must be a 5-field cron expression (minute hour day-of-month month day-of-week), "
            f"got {len(parts)} field(s) in {expr!r}"
        )
    values = [_parse_field(part, spec, key) for part, spec in zip(parts, FIELDS, strict=True)]
    dow = values[4]
    if dow is not None:
        dow = frozenset(v % 7 for v in dow)
    return CronSchedule(
        values[0],
        values[1],
        values[2],
        values[3],
        dow,
        either_day=not parts[2].startswith("*") and not parts[4].startswith("*"),
    )


def _parse_field(text: str, spec: _Field, key: str) -> frozenset[int] | None:
    if text == "*":
        return None
    out: set[int] = set()
    for item in text.split(","):
        m = _ITEM.fullmatch(item)
        if not m:
            raise ConfigError(f"{key}: {spec.name} field {text!r}: cannot read {item!r}")
        rng, step_text = m.group("range"), m.group("step")
        if rng == "*":
            lo, hi = spec.low, spec.high
        elif "-" in rng:
            a, b = rng.split("-", 1)
            lo, hi = _value(a, spec, key), _value(b, spec, key)
            if lo > hi:
                raise ConfigError(f"{key}: {spec.name} field {text!r}: range {rng!r} goes backwards")
        else:
            if step_text is not None:
                raise ConfigError(
                    f"{key}: {spec.name} field {text!r}: a step goes after * or a range ({rng}-{spec.high}/"
                    f"{step_text}), not after a single value"
                )
            lo = hi = _value(rng, spec, key)
        step = int(step_text) if step_text is not None else 1
        if step < 1:
            raise ConfigError(f"{key}: {spec.name} field {text!r}: step must be >= 1, got {step}")
        out.update(range(lo, hi + 1, step))
    return frozenset(out)


def _value(token: str, spec: _Field, key: str) -> int:
    if token.isdigit():
        v = int(token)
        if not spec.low <= v <= spec.high:
            raise ConfigError(
                f"{key}: {spec.name} value {v} is out of range {spec.low}-{spec.high}"
                + (" (0 and 7 are Sunday)" if spec.names is WEEKDAYS else "")
            )
        return v
    if token in spec.names:
        return spec.names.index(token) + spec.first_name
    allowed = f"a number {spec.low}-{spec.high}" + (
        f" or a name {spec.names[0]}..{spec.names[-1]}" if spec.names else ""
    )
    raise ConfigError(f"{key}: {spec.name} value {token!r} is not {allowed}")

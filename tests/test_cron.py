"""schedule.retrain_cron: crontab(5) semantics, validated when the configuration is loaded."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from deeplog_siem.cli import main
from deeplog_siem.config import parse_config
from deeplog_siem.errors import ConfigError
from deeplog_siem.scheduler import build_scheduler

from .conftest import config_data

# A Wednesday: every weekday comes round within the next week.
START = datetime(2024, 5, 15, 12, 7, tzinfo=UTC)


def _fires(cron: str, n: int, make_config, clients) -> list[datetime]:
    """The next `n` fire times of the daemon's retraining job for `cron`, from START."""
    cfg = make_config(schedule={"retrain_cron": cron})
    sched = build_scheduler(cfg, clients, threading.Event())
    trigger = sched.get_job("retrain").trigger
    out: list[datetime] = []
    prev = None
    now = START
    for _ in range(n):
        t = trigger.get_next_fire_time(prev, now)
        assert t is not None
        out.append(t)
        prev, now = t, t + timedelta(microseconds=1)
    return out


@pytest.mark.parametrize("cron", ["0 3 * * 0", "0 3 * * 7", "0 3 * * sun", "0 3 * * SUN", "@weekly"])
def test_sunday_is_0_and_7(cron, make_config, clients):
    fires = _fires(cron, 3, make_config, clients)
    hour = 0 if cron == "@weekly" else 3
    assert all(t.strftime("%A") == "Sunday" and (t.hour, t.minute) == (hour, 0) for t in fires), fires
    assert fires[0] == datetime(2024, 5, 19, hour, tzinfo=UTC)
    assert all(b - a == timedelta(days=7) for a, b in zip(fires, fires[1:], strict=False))


def test_weekdays_range(make_config, clients):
    fires = _fires("0 3 * * 1-5", 10, make_config, clients)
    assert {t.strftime("%a") for t in fires} == {"Mon", "Tue", "Wed", "Thu", "Fri"}
    assert fires[0] == datetime(2024, 5, 16, 3, tzinfo=UTC)  # Thursday: Wednesday 03:00 has passed


@pytest.mark.parametrize(
    ("cron", "days"),
    [
        ("0 3 * * 5-7", {"Fri", "Sat", "Sun"}),  # a range across Sunday
        ("0 3 * * */2", {"Sun", "Tue", "Thu", "Sat"}),
        ("0 3 * * 1-7/2", {"Mon", "Wed", "Fri", "Sun"}),
        ("0 3 * * mon,wed-fri", {"Mon", "Wed", "Thu", "Fri"}),
        ("0 3 * * 6,0", {"Sat", "Sun"}),
    ],
)
def test_weekday_ranges_steps_and_lists(cron, days, make_config, clients):
    fires = _fires(cron, 14, make_config, clients)
    assert {t.strftime("%a") for t in fires} == days


def test_minute_steps_on_weekend_days(make_config, clients):
    fires = _fires("*/15 * * * 6,0", 200, make_config, clients)
    assert fires[0] == datetime(2024, 5, 18, 0, 0, tzinfo=UTC)  # the first Saturday
    assert {t.minute for t in fires} == {0, 15, 30, 45}
    assert {t.strftime("%a") for t in fires} == {"Sat", "Sun"}
    assert all(b - a == timedelta(minutes=15) for a, b in zip(fires[:95], fires[1:96], strict=True))


def test_day_of_month_or_day_of_week(make_config, clients):
    # Both restricted: cron runs on the 1st of the month and on every Monday.
    fires = _fires("0 0 1 * mon", 8, make_config, clients)
    assert all(t.day == 1 or t.strftime("%a") == "Mon" for t in fires)
    assert any(t.day == 1 and t.strftime("%a") != "Mon" for t in fires)
    assert any(t.strftime("%a") == "Mon" and t.day != 1 for t in fires)
    # Day of week starting with `*`: both must match (no day is the 1st and a Sunday-step day otherwise).
    fires = _fires("0 0 1 * */2", 3, make_config, clients)
    assert all(t.day == 1 and t.strftime("%a") in {"Sun", "Tue", "Thu", "Sat"} for t in fires)


def test_month_names_and_hours(make_config, clients):
    fires = _fires("30 4,16 * jun-jul *", 4, make_config, clients)
    assert fires[0] == datetime(2024, 6, 1, 4, 30, tzinfo=UTC)
    assert [t.hour for t in fires] == [4, 16, 4, 16]


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("99 * * * *", "minute value 99 is out of range 0-59"),
        ("0 3 * *", "must be a 5-field cron expression"),
        ("0 3 * * 0 1", "must be a 5-field cron expression"),
        ("0 3 * * 8", "day of week value 8 is out of range 0-7"),
        ("0 24 * * *", "hour value 24 is out of range 0-23"),
        ("0 3 0 * *", "day of month value 0 is out of range 1-31"),
        ("0 3 * 13 *", "month value 13 is out of range 1-12"),
        ("0 3 * * 5-1", "range '5-1' goes backwards"),
        ("*/0 3 * * *", "step must be >= 1"),
        ("0 3 * * funday", "day of week value 'funday' is not"),
        ("5/10 * * * *", "a step goes after * or a range"),
        ("0 3 * * 1,,2", "cannot read ''"),
        ("@reboot", "unknown macro"),
    ],
)
def test_invalid_expressions_are_rejected_at_load(cron, why, es_section, prefix, tmp_path):
    data = config_data(es_section, prefix, tmp_path, schedule={"retrain_cron": cron})
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert str(e.value).startswith("schedule.retrain_cron: "), str(e.value)
    assert why in str(e.value)


def test_config_check_rejects_an_invalid_cron(tmp_path, capsys):
    path = tmp_path / "deeplog.yml"
    path.write_text(
        "elasticsearch: {hosts: ['http://localhost:9200']}\n"
        "source: {index: logs, session_field: session.id}\n"
        "schedule:\n  retrain_cron: '99 * * * *'\n",
        encoding="utf-8",
    )
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: schedule.retrain_cron: minute value 99 is out of range 0-59" in err
    path.write_text(path.read_text().replace("'99 * * * *'", "'0 3 * * 7'  # weekly"), encoding="utf-8")
    assert main(["config", "check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out

"""The Events a status write owes (status/announcements.py): what is recorded, the names,
expiry, and which condition flips are news."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from magistral_operator.api.status import Condition, PendingEvent
from magistral_operator.status.announcements import (
    MAX_PENDING,
    event_key,
    event_name,
    expired,
    owed,
    transition_note,
)
from magistral_operator.status.conditions import Transition

T0 = "2026-12-01T11:00:00Z"
T1 = "2026-12-01T11:00:30Z"


def _pending(reason: str, *, time: str = T0, salt: str = "uid/1") -> PendingEvent:
    (event,) = owed([], [("Normal", reason, f"{reason} happened")], now=time, salt=salt)
    return event


def test_a_write_records_its_notes_in_order() -> None:
    got = owed(
        [], [("Normal", "RolloutStarted", "b"), ("Warning", "Overflow", "c")], now=T0, salt="s"
    )
    assert [(e.type, e.reason, e.message, e.time) for e in got] == [
        ("Normal", "RolloutStarted", "b", T0),
        ("Warning", "Overflow", "c", T0),
    ]


def test_still_pending_ones_are_kept_before_the_new_ones() -> None:
    old = _pending("RolloutStarted")
    got = owed([old], [("Normal", "ScaledUp", "x")], now=T1, salt="uid/2")
    assert [e.reason for e in got] == ["RolloutStarted", "ScaledUp"]
    assert got[0] == old  # unchanged: its name is the one a crashed post may have used


def test_nothing_owed_is_nothing_recorded() -> None:
    assert owed([], [], now=T0, salt="s") == []


def test_the_same_record_gives_the_same_name() -> None:
    a, b = _pending("RolloutSucceeded"), _pending("RolloutSucceeded")
    assert a.key == b.key
    assert event_name("ep", a) == f"ep.{a.key}"


@pytest.mark.parametrize(
    "other",
    [
        {"salt": "uid/2"},  # another write (resourceVersion), same text and second
        {"time": T1},
        {"reason": "RolledBack"},
        {"message": "other"},
        {"type_": "Warning"},
    ],
)
def test_another_announcement_gets_another_name(other: dict[str, str]) -> None:
    base = {
        "salt": "uid/1",
        "type_": "Normal",
        "reason": "RolloutStarted",
        "message": "m",
        "time": T0,
    }
    assert event_key(**base) != event_key(**{**base, **other})


def test_the_same_note_twice_in_one_write_is_one_announcement() -> None:
    note = ("Normal", "Overflow", "1 replica to spot")
    assert len(owed([], [note, note], now=T0, salt="s")) == 1


def test_messages_are_cut_and_the_record_is_bounded() -> None:
    (long,) = owed([], [("Normal", "R", "x" * 5000)], now=T0, salt="s")
    assert len(long.message) == 1024
    many = owed([], [("Normal", "R", str(i)) for i in range(MAX_PENDING + 5)], now=T0, salt="s")
    assert len(many) == MAX_PENDING
    assert many[-1].message == str(MAX_PENDING + 4)  # the oldest go first


@pytest.mark.parametrize(
    ("age", "is_expired"),
    [(timedelta(0), False), (timedelta(minutes=59), False), (timedelta(minutes=61), True)],
)
def test_an_announcement_older_than_the_event_ttl_is_dropped(
    age: timedelta, is_expired: bool
) -> None:
    now = datetime(2026, 12, 1, 11, 0, tzinfo=UTC) + age
    assert expired(_pending("R"), now=now) is is_expired


def test_an_unreadable_time_is_expired() -> None:
    event = _pending("R").model_copy(update={"time": "garbage"})
    assert expired(event, now=datetime.now(UTC))


def _flip(type_: str, old: str | None, new: str, reason: str = "R") -> Transition:
    cond = Condition(type=type_, status=new, reason=reason, message="m", last_transition_time=T0)  # type: ignore[arg-type]
    return Transition(type=type_, old_status=old, new=cond)


@pytest.mark.parametrize(
    ("transition", "note"),
    [
        (_flip("Ready", None, "False"), ("Normal", "R", "Ready=False: m")),
        (_flip("Progressing", None, "False"), None),  # appearing False: no news
        (_flip("Progressing", None, "True"), ("Normal", "R", "Progressing=True: m")),
        (_flip("Degraded", None, "False"), None),
        (_flip("Degraded", "False", "True"), ("Warning", "R", "Degraded=True: m")),
        (_flip("Ready", "True", "False"), ("Warning", "R", "Ready=False: m")),
        (_flip("Ready", "False", "True"), ("Normal", "R", "Ready=True: m")),
        (_flip("Degraded", "True", "False"), ("Normal", "R", "Degraded=False: m")),
    ],
)
def test_which_condition_flips_are_news(
    transition: Transition, note: tuple[str, str, str] | None
) -> None:
    assert transition_note(transition) == note

"""Promotions at their edges: window start/end, time zone, overlapping rules, daylight-saving days."""
import datetime

import pytest

from relay.promotions import (Promotion, PromotionError, format_days, local_time, offers, parse_days,
                              parse_window, validate)

UTC = datetime.timezone.utc
# 1 play 1.00, 3 plays 2.50 (the example bundles).
OPTIONS = [("1", 1, 100), ("3", 3, 250)]


def happy_hour(id=1, cabinet=None, kind="bonus", value=1, days="weekdays", window="14:00-17:00"):
    start, end = parse_window(window)
    return Promotion(id, cabinet, kind, value, parse_days(days), start, end)


def at(tz, *args):
    """Local wall-clock time in `tz`, as the relay would see it from a UTC instant."""
    from zoneinfo import ZoneInfo
    local = datetime.datetime(*args, tzinfo=ZoneInfo(tz))
    return local_time(tz, local.astimezone(UTC))


def summary(result):
    return [(o.key, o.credits, o.amount, o.promo.id if o.promo else None) for o in result]


# 2025-11-26 is a Wednesday; 2025-11-29 a Saturday.
@pytest.mark.parametrize("when, on", [
    ((2025, 11, 26, 13, 59, 59), False),   # just before the start
    ((2025, 11, 26, 14, 0, 0), True),      # start is inclusive
    ((2025, 11, 26, 16, 59, 59), True),
    ((2025, 11, 26, 17, 0, 0), False),     # end is exclusive
    ((2025, 11, 29, 15, 0, 0), False),     # Saturday: not a weekday
])
def test_window_edges(when, on):
    got = offers(OPTIONS, "usd", [happy_hour()], "cab1", at("Europe/Berlin", *when))
    expected = [("1", 2, 100, 1), ("3", 4, 250, 1)] if on else [("1", 1, 100, None), ("3", 3, 250, None)]
    assert summary(got) == expected


def test_evaluated_in_the_arcades_zone_not_utc():
    promo = [happy_hour()]
    instant = datetime.datetime(2025, 11, 26, 20, 30, tzinfo=UTC)       # 15:30 in New York, 21:30 in Berlin
    assert offers(OPTIONS, "usd", promo, "c", local_time("America/New_York", instant))[0].promo is not None
    assert offers(OPTIONS, "usd", promo, "c", local_time("Europe/Berlin", instant))[0].promo is None


def test_spring_forward_day_keeps_wall_clock_bounds():
    # Europe/Berlin 2025-03-30 (Sunday): 02:00 CET jumps to 03:00 CEST.
    night = [happy_hour(days="sun", window="01:00-03:00")]
    inside = local_time("Europe/Berlin", datetime.datetime(2025, 3, 30, 0, 59, tzinfo=UTC))   # 01:59 CET
    after = local_time("Europe/Berlin", datetime.datetime(2025, 3, 30, 1, 0, tzinfo=UTC))     # 03:00 CEST
    assert (inside.hour, inside.minute, after.hour) == (1, 59, 3)
    assert offers(OPTIONS, "usd", night, "c", inside)[0].promo is not None
    assert offers(OPTIONS, "usd", night, "c", after)[0].promo is None
    # The afternoon window is still 14:00-17:00 local, i.e. 12:00-15:00 UTC that day.
    sunday = [happy_hour(days="sun")]
    assert offers(OPTIONS, "usd", sunday, "c", local_time("Europe/Berlin", datetime.datetime(
        2025, 3, 30, 12, 0, tzinfo=UTC)))[0].promo is not None
    assert offers(OPTIONS, "usd", sunday, "c", local_time("Europe/Berlin", datetime.datetime(
        2025, 3, 30, 15, 0, tzinfo=UTC)))[0].promo is None


def test_fall_back_day_repeated_hour_is_inside_both_times():
    # America/New_York 2025-11-02 (Sunday): 01:00-02:00 happens twice (EDT then EST).
    promo = [happy_hour(days="sun", window="01:00-02:00")]
    first = local_time("America/New_York", datetime.datetime(2025, 11, 2, 5, 30, tzinfo=UTC))   # 01:30 EDT
    second = local_time("America/New_York", datetime.datetime(2025, 11, 2, 6, 30, tzinfo=UTC))  # 01:30 EST
    after = local_time("America/New_York", datetime.datetime(2025, 11, 2, 7, 0, tzinfo=UTC))    # 02:00 EST
    assert (first.hour, second.hour, first.utcoffset() != second.utcoffset()) == (1, 1, True)
    assert offers(OPTIONS, "usd", promo, "c", first)[0].promo is not None
    assert offers(OPTIONS, "usd", promo, "c", second)[0].promo is not None
    assert offers(OPTIONS, "usd", promo, "c", after)[0].promo is None


def test_overnight_window_belongs_to_the_day_it_opens():
    late = [happy_hour(days="fri", window="22:00-02:00")]
    tz = "Europe/London"
    assert offers(OPTIONS, "gbp", late, "c", at(tz, 2025, 11, 28, 22, 0))[0].promo is not None   # Fri 22:00
    assert offers(OPTIONS, "gbp", late, "c", at(tz, 2025, 11, 29, 1, 59))[0].promo is not None   # Sat 01:59
    assert offers(OPTIONS, "gbp", late, "c", at(tz, 2025, 11, 29, 2, 0))[0].promo is None        # Sat 02:00
    assert offers(OPTIONS, "gbp", late, "c", at(tz, 2025, 11, 28, 1, 0))[0].promo is None        # Fri 01:00


def test_percent_off_rounds_half_up_and_is_the_charged_amount():
    promo = [happy_hour(kind="percent", value=25)]
    got = offers([("1", 1, 150), ("3", 3, 250)], "usd", promo, "c", at("UTC", 2025, 11, 26, 15, 0))
    assert [(o.amount, o.regular_amount, o.credits) for o in got] == [(113, 150, 1), (188, 250, 3)]


def test_cabinet_rule_beats_arcade_wide_even_when_worse():
    arcade = happy_hour(id=1, kind="percent", value=50)
    mine = happy_hour(id=2, cabinet="cab1", kind="bonus", value=1)
    when = at("UTC", 2025, 11, 26, 15, 0)
    assert summary(offers(OPTIONS, "usd", [arcade, mine], "cab1", when)) == [("1", 2, 100, 2), ("3", 4, 250, 2)]
    # Another cabinet only sees the arcade-wide rule.
    assert summary(offers(OPTIONS, "usd", [arcade, mine], "cab2", when)) == [("1", 1, 50, 1), ("3", 3, 125, 1)]


def test_same_scope_best_price_per_credit_wins_per_option_then_older_rule():
    bonus = happy_hour(id=1, kind="bonus", value=1)          # 1 play: 2 for 1.00 (0.50); 3 plays: 4 for 2.50 (0.625)
    percent = happy_hour(id=2, kind="percent", value=40)     # 1 play: 0.60;            3 plays: 3 for 1.50 (0.50)
    when = at("UTC", 2025, 11, 26, 15, 0)
    assert summary(offers(OPTIONS, "usd", [percent, bonus], "c", when)) == [("1", 2, 100, 1), ("3", 3, 150, 2)]
    twin_a, twin_b = happy_hour(id=7), happy_hour(id=3)
    assert {o.promo.id for o in offers(OPTIONS, "usd", [twin_a, twin_b], "c", when)} == {3}


def test_promotions_never_stack():
    rules = [happy_hour(id=1), happy_hour(id=2, value=2)]
    got = offers(OPTIONS, "usd", rules, "c", at("UTC", 2025, 11, 26, 15, 0))
    assert [(o.credits, o.bonus) for o in got] == [(3, 2), (5, 2)]


def test_bonus_capped_by_pulse_limit():
    rules = [happy_hour(value=5)]
    got = offers([("big", 125, 10000)], "usd", rules, "c", at("UTC", 2025, 11, 26, 15, 0), coins_per_credit=2)
    assert (got[0].credits, got[0].bonus) == (127, 2)          # 127 x 2 = 254 <= 255
    full = offers([("max", 127, 10000)], "usd", rules, "c", at("UTC", 2025, 11, 26, 15, 0), coins_per_credit=2)
    assert (full[0].credits, full[0].promo) == (127, None)


@pytest.mark.parametrize("text, days", [
    ("weekdays", {0, 1, 2, 3, 4}), ("weekends", {5, 6}), ("daily", set(range(7))),
    ("mon-wed", {0, 1, 2}), ("sat,sun", {5, 6}), ("fri-mon", {4, 5, 6, 0}), ("Monday,wed-thu", {0, 2, 3}),
])
def test_parse_days(text, days):
    assert parse_days(text) == days


@pytest.mark.parametrize("call, message", [
    (lambda: parse_days("someday"), "bad days"),
    (lambda: parse_days("mon-tue-wed"), "bad days"),
    (lambda: parse_window("14:00"), "bad window"),
    (lambda: parse_window("14:00-14:00"), "same time"),
    (lambda: parse_window("25:00-26:00"), "bad time"),
    (lambda: parse_window("24:00-02:00"), "only allowed as an end"),
    (lambda: parse_window("9-17"), "bad time"),
    (lambda: validate("free", 1), "bad kind"),
    (lambda: validate("percent", 95), "between 1 and 90"),
    (lambda: validate("bonus", 0), "between 1 and"),
    (lambda: local_time("Mars/Olympus"), "unknown time zone"),
])
def test_bad_rules_are_clear_errors(call, message):
    with pytest.raises(PromotionError, match=message):
        call()


def test_format_days_round_trips():
    for text in ("weekdays", "weekends", "daily", "mon,wed,fri"):
        assert format_days(parse_days(text)) == text
    assert happy_hour().describe() == "+1 bonus credit, weekdays 14:00-17:00, all cabinets"
    assert parse_window("22:00-24:00") == (1320, 1440)


# -- arcade promo ----------------------------------------------------------------------------------

@pytest.fixture
def promo_env(tmp_path, monkeypatch):
    from relay.ledger import open_ledger
    db = tmp_path / "arcade.db"
    with open_ledger(db) as led:
        led.add_cabinet("cab1", price_cents=100)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCADE_DB", str(db))
    monkeypatch.setenv("ARCADE_TZ", "Europe/Berlin")
    return db


def test_promo_command_add_list_remove(promo_env, capsys):
    import json
    from tools.commands import promo as promo_cmd
    assert promo_cmd.main(["add", "--bonus", "1", "--days", "weekdays", "--window", "14:00-17:00",
                           "--label", "Happy hour"]) == 0
    assert "added promotion 1: +1 bonus credit, weekdays 14:00-17:00, all cabinets (Europe/Berlin)" \
        in capsys.readouterr().out
    assert promo_cmd.main(["add", "--percent", "20", "--days", "sat,sun", "--window", "22:00-02:00",
                           "--cabinet", "cab1"]) == 0
    capsys.readouterr()
    assert promo_cmd.main(["list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["cabinet"], r["kind"], r["value"], r["days"], r["window"]) for r in rows] == [
        (1, None, "bonus", 1, "weekdays", "14:00-17:00"), (2, "cab1", "percent", 20, "weekends", "22:00-02:00")]
    assert promo_cmd.main(["remove", "1"]) == 0
    capsys.readouterr()
    assert promo_cmd.main(["list", "--json"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [2]


@pytest.mark.parametrize("argv, message", [
    (["add", "--percent", "95", "--window", "10:00-11:00"], "between 1 and 90"),
    (["add", "--bonus", "1", "--window", "10:00"], "bad window"),
    (["add", "--bonus", "1", "--window", "10:00-11:00", "--days", "funday"], "bad days"),
    (["add", "--bonus", "1", "--window", "10:00-11:00", "--cabinet", "nope"], "no cabinet 'nope'"),
    (["remove", "42"], "no promotion 42"),
])
def test_promo_command_refuses_bad_input_and_changes_nothing(promo_env, capsys, argv, message):
    from tools.commands import promo as promo_cmd
    assert promo_cmd.main(argv) == 2
    assert message in capsys.readouterr().err
    from relay.ledger import open_ledger
    with open_ledger(promo_env) as led:
        assert led.list_promotions() == []

"""Promotions: time-window rules that give bonus credits or a percentage off.

A rule applies to one cabinet or to the whole arcade (cabinet None), on some weekdays, from a local
start time (inclusive) to a local end time (exclusive), in the arcade's time zone (ARCADE_TZ).

Rules, stated once:

* Times are wall-clock times in the arcade's zone. A window whose end is not after its start runs
  overnight: "22:00-02:00" on Friday is Friday 22:00 to Saturday 02:00 (the weekday is the day the
  window opens). "24:00" is accepted as an end (midnight at the end of the day).
* Daylight saving: an instant is converted to local time first, then compared. On the spring-forward
  day a window keeps its wall-clock bounds (14:00-17:00 is still 14:00-17:00; an hour that doesn't exist
  is never seen); on the fall-back day an hour that happens twice is inside the window both times.
* At most one promotion applies to a purchase; they never stack. A cabinet's own rules win over
  arcade-wide ones. Among rules of the same scope, the one that gives the player the lowest price per
  credit for that option wins; on a tie, the older rule (lower id) wins.
* Bonus credits are per purchase (+1 on a 3-play bundle gives 4 plays), capped so that the coin pulses
  stay within the protocol's 255; a percentage off is rounded to the nearest cent (half up).
* The page shows the offer computed by `offers()`; the purchase recomputes it and refuses to charge
  anything different from what was shown (relay/pay.py), so the price shown is the price charged.
"""
import datetime
import re
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

KINDS = ("bonus", "percent")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SETS = {"daily": range(7), "all": range(7), "weekdays": range(5), "weekends": (5, 6)}
MAX_PULSES = 255
MAX_PERCENT = 90
MAX_BONUS = 50


class PromotionError(ValueError):
    """A rule that can't be stored; the message says what to write instead."""


class Promotion:
    def __init__(self, id, cabinet_id, kind, value, days, start, end, label=""):
        self.id = id
        self.cabinet_id = cabinet_id      # None: the whole arcade
        self.kind = kind                  # "bonus" (extra credits per purchase) or "percent" (off the price)
        self.value = value
        self.days = frozenset(days)       # 0 = Monday ... 6 = Sunday
        self.start = start                # minutes after local midnight, inclusive
        self.end = end                    # minutes after local midnight, exclusive (<= start: overnight)
        self.label = label

    def __repr__(self):
        return "<Promotion %s %s>" % (self.id, self.describe())

    @property
    def window(self):
        return "%s-%s" % (_hhmm(self.start), _hhmm(self.end))

    @property
    def days_text(self):
        return format_days(self.days)

    def headline(self):
        """What the player reads: '+1 bonus credit' or '20% off'."""
        if self.kind == "bonus":
            return "+%d bonus credit%s" % (self.value, "" if self.value == 1 else "s")
        return "%d%% off" % self.value

    def until(self):
        """'until 17:00' (or 'until midnight') for the pay page."""
        return "until midnight" if self.end in (0, 24 * 60) else "until " + _hhmm(self.end)

    def describe(self):
        where = "cabinet %s" % self.cabinet_id if self.cabinet_id else "all cabinets"
        return "%s, %s %s, %s" % (self.headline(), self.days_text, self.window, where)

    def active_at(self, local):
        """Is this rule on at `local` (an aware or naive datetime already in the arcade's zone)?"""
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= minute < self.end
        # Overnight: the evening part belongs to today, the early part to the day before.
        if local.weekday() in self.days and minute >= self.start:
            return True
        return (local.weekday() - 1) % 7 in self.days and minute < self.end


class Offer:
    """One thing the page sells: `credits` plays (bonus included) for `amount` minor units."""

    def __init__(self, key, base_credits, regular_amount, currency, promo=None, bonus=0, amount=None):
        self.key = key                    # stable option id for forms, e.g. "1" or "3"
        self.base_credits = base_credits
        self.bonus = bonus
        self.credits = base_credits + bonus
        self.regular_amount = regular_amount
        self.amount = regular_amount if amount is None else amount
        self.currency = currency
        self.promo = promo

    def __repr__(self):
        return "<Offer %s: %d credits for %d %s>" % (self.key, self.credits, self.amount, self.currency)

    @property
    def per_credit(self):
        return Fraction(self.amount, self.credits)


def parse_time(text, allow_24=False):
    m = re.fullmatch(r"([01]?\d|2[0-4]):([0-5]\d)", (text or "").strip())
    if not m:
        raise PromotionError("bad time %r: write HH:MM, e.g. 14:00" % text)
    minutes = int(m.group(1)) * 60 + int(m.group(2))
    if minutes > 24 * 60 or (minutes == 24 * 60 and not allow_24):
        raise PromotionError("bad time %r: 24:00 is only allowed as an end time" % text)
    return minutes


def parse_window(text):
    """'14:00-17:00' -> (840, 1020)."""
    parts = (text or "").split("-")
    if len(parts) != 2:
        raise PromotionError("bad window %r: write START-END, e.g. 14:00-17:00" % text)
    start, end = parse_time(parts[0]), parse_time(parts[1], allow_24=True)
    if start == end:
        raise PromotionError("bad window %r: start and end are the same time" % text)
    return start, end


def parse_days(text):
    """'weekdays', 'weekends', 'daily', 'mon-fri', 'sat,sun', 'mon,wed-fri' -> set of 0..6."""
    text = (text or "").strip().lower()
    if text in _DAY_SETS:
        return frozenset(_DAY_SETS[text])
    days = set()
    for part in text.split(","):
        ends = part.strip().split("-")
        try:
            idx = [DAY_NAMES.index(e.strip()[:3]) for e in ends if e.strip()]
        except ValueError:
            idx = []
        if len(idx) != len(ends) or not 1 <= len(idx) <= 2:
            raise PromotionError("bad days %r: write weekdays, weekends, daily, or names like mon-fri or sat,sun" % text)
        a, b = idx[0], idx[-1]
        days.update(range(a, b + 1) if a <= b else list(range(a, 7)) + list(range(0, b + 1)))
    return frozenset(days)


def format_days(days):
    days = frozenset(days)
    for name in ("daily", "weekdays", "weekends"):
        if days == frozenset(_DAY_SETS[name]):
            return name
    return ",".join(DAY_NAMES[d] for d in sorted(days))


def validate(kind, value):
    if kind not in KINDS:
        raise PromotionError("bad kind %r: use bonus (extra credits) or percent (off the price)" % kind)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PromotionError("bad value %r: a whole number" % (value,))
    if kind == "bonus" and not 1 <= value <= MAX_BONUS:
        raise PromotionError("bad bonus %d: between 1 and %d credits per purchase" % (value, MAX_BONUS))
    if kind == "percent" and not 1 <= value <= MAX_PERCENT:
        raise PromotionError("bad percentage %d: between 1 and %d" % (value, MAX_PERCENT))


def zone(name):
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise PromotionError("unknown time zone %r: use an IANA name such as Europe/Berlin or America/New_York" % name)


def local_time(tz_name, now=None):
    """`now` (aware datetime, or Unix seconds; default: the current time) in the arcade's zone."""
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    elif isinstance(now, (int, float)):
        now = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    elif now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware one (or Unix seconds)")
    return now.astimezone(zone(tz_name))


def active(promos, cabinet_id, local):
    """The rules on at `local` that concern `cabinet_id`, with the ones that win first."""
    mine = [p for p in promos if p.cabinet_id == cabinet_id and p.active_at(local)]
    return mine or [p for p in promos if p.cabinet_id is None and p.active_at(local)]


def _apply(promo, key, credits, amount, currency, coins_per_credit):
    if promo.kind == "bonus":
        room = MAX_PULSES // max(1, coins_per_credit) - credits
        bonus = min(promo.value, room)
        if bonus <= 0:
            return None
        return Offer(key, credits, amount, currency, promo, bonus=bonus)
    charged = (amount * (100 - promo.value) + 50) // 100
    if charged < 1 or charged >= amount:
        return None
    return Offer(key, credits, amount, currency, promo, amount=charged)


def offers(options, currency, promos, cabinet_id, local, coins_per_credit=1):
    """Price list with promotions applied.

    options: [(key, credits, amount)] from the cabinet's price table. Returns one Offer per option,
    each carrying the single promotion that applies to it (or none)."""
    on = active(promos, cabinet_id, local)
    result = []
    for key, credits, amount in options:
        best = Offer(key, credits, amount, currency)
        for promo in on:           # `on` is already limited to the winning scope
            candidate = _apply(promo, key, credits, amount, currency, coins_per_credit)
            if candidate is None:
                continue
            if best.promo is None or candidate.per_credit < best.per_credit or (
                    candidate.per_credit == best.per_credit and promo.id < best.promo.id):
                best = candidate
        result.append(best)
    return result


def _hhmm(minutes):
    return "%02d:%02d" % divmod(minutes, 60)

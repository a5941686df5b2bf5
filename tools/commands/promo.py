"""arcade promo: add, list and remove promotions (bonus credits or a percentage off, in time windows).

    arcade promo add --bonus 1 --days weekdays --window 14:00-17:00 --label "Happy hour"
    arcade promo add --percent 20 --days sat,sun --window 10:00-12:00 --cabinet cab1
    arcade promo list
    arcade promo remove 3

Windows are local times in ARCADE_TZ; the start is inclusive, the end exclusive; an end before the
start runs past midnight. One promotion applies per purchase: a cabinet's own beats arcade-wide, then
the lowest price per credit wins (see relay/promotions.py).
"""
import argparse
import json
import sys

from relay import config, promotions, screenlines
from relay.ledger import LedgerError, open_ledger


def _parser():
    p = argparse.ArgumentParser(prog="arcade promo", description="Manage promotions shown and charged on the pay page.")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a promotion")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--bonus", type=int, metavar="N", help="N extra credits per purchase")
    kind.add_argument("--percent", type=int, metavar="P", help="P%% off the price")
    add.add_argument("--days", default="daily", help="weekdays, weekends, daily, or e.g. mon-fri, sat,sun (default daily)")
    add.add_argument("--window", required=True, help="local START-END, e.g. 14:00-17:00 (end exclusive)")
    add.add_argument("--cabinet", help="only this cabinet (default: the whole arcade)")
    add.add_argument("--label", default="", help="what players read, e.g. 'Happy hour'")
    lst = sub.add_parser("list", help="list promotions and whether each is on now")
    lst.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    rm = sub.add_parser("remove", help="remove a promotion by id")
    rm.add_argument("id", type=int)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(require_webhook_secret=False)
        with open_ledger(cfg["ARCADE_DB"], cfg["ARCADE_DB_BUSY_TIMEOUT"]) as led:
            return _run(args, cfg, led)
    except (config.ConfigError, promotions.PromotionError, LedgerError) as e:
        print("arcade promo: %s" % e, file=sys.stderr)
        return 2


def _screens(led, cfg):
    """Cabinet screens whose promotion line changes now get a new config version (the relay's
    dispatcher also looks every minute or so, for windows that open and close)."""
    for cab, (ver, _price, promo) in sorted(screenlines.refresh(led, cfg["ARCADE_TZ"]).items()):
        print("cabinet %s's screen: %s (config version %d)" % (cab, repr(promo) if promo else "no promotion line", ver))


def _run(args, cfg, led):
    if args.action == "add":
        kind, value = ("bonus", args.bonus) if args.bonus is not None else ("percent", args.percent)
        promotions.validate(kind, value)
        days = promotions.parse_days(args.days)
        start, end = promotions.parse_window(args.window)
        if len(args.label) > 60 or "\n" in args.label:
            raise promotions.PromotionError("label is too long: at most 60 characters on one line")
        promo_id = led.add_promotion(args.cabinet, kind, value, days, start, end, args.label.strip())
        promo = promotions.Promotion(promo_id, args.cabinet, kind, value, days, start, end, args.label)
        print("added promotion %d: %s (%s)" % (promo_id, promo.describe(), cfg["ARCADE_TZ"]))
        _screens(led, cfg)
        return 0
    if args.action == "remove":
        led.remove_promotion(args.id)
        print("removed promotion %d" % args.id)
        _screens(led, cfg)
        return 0
    local = promotions.local_time(cfg["ARCADE_TZ"])
    rows = led.list_promotions()
    promos = [promotions.Promotion(r["id"], r["cabinet_id"], r["kind"], r["value"], r["days"], r["start_min"],
                                   r["end_min"], r["label"]) for r in rows]
    if args.json:
        for p in promos:
            print(json.dumps({"id": p.id, "cabinet": p.cabinet_id, "kind": p.kind, "value": p.value,
                              "days": p.days_text, "window": p.window, "label": p.label,
                              "active_now": p.active_at(local), "tz": cfg["ARCADE_TZ"]}))
        return 0
    if not promos:
        print("no promotions (add one with `arcade promo add --bonus 1 --days weekdays --window 14:00-17:00`)")
        return 0
    print("%-4s %-10s %-18s %-16s %-12s %-4s %s" % ("id", "cabinet", "offer", "days", "window", "now", "label"))
    for p in promos:
        print("%-4d %-10s %-18s %-16s %-12s %-4s %s" % (p.id, p.cabinet_id or "(all)", p.headline(), p.days_text,
                                                       p.window, "on" if p.active_at(local) else "-", p.label))
    print("times are %s; now %s" % (cfg["ARCADE_TZ"], local.strftime("%a %H:%M")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

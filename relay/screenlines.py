"""The two lines a cabinet's own screen shows under its QR (issue 16): the price line and the
promotion on now. They travel in the cabinet's signed retained config (docs/protocol.md, Config), so
the relay issues a new config version whenever what they should say changes: prices or bundles
edited, a promotion added or removed, a promotion's window opening or closing (`refresh`, run by the
dispatcher every SCREEN_CHECK_SECONDS and by the commands that change prices or promotions).

The price line is the sticker's ("from $0.84 a play", relay/checkout.py from_price), the promotion
line the pay page's headline ("20% off until 17:00"), both as relay/protocol.py screen_text makes
them drawable by the board's 8x8 ASCII font (EUR 1.00 for the euro sign).
"""
from relay import checkout, promotions
from relay.protocol import MAX_SCREEN_LINE, screen_text

SCREEN_CHECK_SECONDS = 20


def load_promotions(ledger):
    return [promotions.Promotion(r["id"], r["cabinet_id"], r["kind"], r["value"], r["days"], r["start_min"],
                                 r["end_min"], r["label"]) for r in ledger.list_promotions()]


def lines(cabinet, promos, tz_name, now=None):
    """(price line, promotion line or "") for `cabinet` at `now` (Unix seconds; default: now)."""
    price = screen_text(checkout.from_price(checkout.options(cabinet), cabinet["currency"]))
    promo = ""
    for offer in checkout.offers(cabinet, promos, tz_name, now):
        if offer.promo is not None:
            p = offer.promo
            long = "%s %s" % (p.headline(), p.until())
            promo = screen_text(long if len(screen_text(long)) == len(long) and len(long) <= MAX_SCREEN_LINE
                                else p.headline())
            break
    return price, promo


def refresh(ledger, tz_name, now=None):
    """Issue a new config version to every provisioned cabinet whose screen lines changed. Returns
    {cabinet id: (new version, price, promo)} for the ones that got one."""
    promos = load_promotions(ledger)
    changed = {}
    for row in ledger.screen_cabinets():
        cabinet = ledger.get_cabinet(row["cabinet_id"])
        if cabinet is None:
            continue
        price, promo = lines(cabinet, promos, tz_name, now)
        if (row["price"], row["promo"]) == (price, promo):
            continue
        ver = ledger.set_screen_lines(cabinet["id"], price, promo, now=now)
        if ver is not None:
            changed[cabinet["id"]] = (ver, price, promo)
    return changed

"""Prices: how many credits an amount buys on a cabinet, and parsing prices typed by operators.

Credits come from the amount Stripe says was paid and the cabinet's price table, never from
metadata. A cabinet has a price per credit, optional bundles (credits for a fixed price, e.g.
3 plays for 2.50) and a number of coins per credit (pulses = credits x coins per credit).
Promotions (issue 5) will plug in as `offers`: extra (credits, cents) pairs valid right now.
"""
import re

MAX_PULSES = 255

# ISO 4217 currencies Stripe treats as zero-decimal: amounts are whole units, not cents.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())


def credits_for(cabinet, amount_cents, currency, offers=()):
    """(credits, "") when `amount_cents` in `currency` buys credits on `cabinet`, else (0, reason)
    with reason "wrong_currency", "amount_mismatch" or "too_many_pulses".

    An amount buys a bundle when it equals the bundle's price exactly; otherwise it must be a whole
    number of single credits at the cabinet's price per credit.
    """
    if not isinstance(currency, str) or currency.lower() != cabinet["currency"]:
        return 0, "wrong_currency"
    if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
        return 0, "amount_mismatch"
    table = {cents: credits for credits, cents in cabinet["bundles"]}
    table.update({cents: credits for credits, cents in offers})
    credits = table.get(amount_cents)
    if credits is None:
        price = cabinet["price_cents"]
        if amount_cents % price:
            return 0, "amount_mismatch"
        credits = amount_cents // price
    if credits * cabinet["coins_per_credit"] > MAX_PULSES:
        return 0, "too_many_pulses"
    return credits, ""


def parse_price(text, currency="usd"):
    """'2.50' -> 250 (cents), '100' -> 100 for a zero-decimal currency like jpy. Raises ValueError
    with a message saying what is accepted."""
    text = str(text).strip()
    if currency.lower() in ZERO_DECIMAL:
        if not re.fullmatch(r"[0-9]+", text) or int(text) <= 0:
            raise ValueError("price %r is not a positive whole amount of %s (it has no decimals), e.g. 100"
                             % (text, currency.upper()))
        return int(text)
    m = re.fullmatch(r"([0-9]+)(?:\.([0-9]{1,2}))?", text)
    if not m:
        raise ValueError("price %r is not an amount like 1.00 or 2.5 (a dot for decimals, at most two, "
                         "no currency sign or thousands separator)" % text)
    cents = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
    if cents <= 0:
        raise ValueError("price %r must be more than zero" % text)
    return cents


def parse_bundle(text, currency="usd"):
    """'3:2.50' -> (3, 250). Raises ValueError saying the expected form."""
    credits, sep, price = str(text).partition(":")
    if not sep or not credits.strip().isdigit() or int(credits) <= 0:
        raise ValueError("bundle %r is not CREDITS:PRICE, e.g. 3:2.50 for 3 plays at 2.50" % text)
    try:
        cents = parse_price(price, currency)
    except ValueError as e:
        raise ValueError("bundle %r: %s" % (text, e))
    return int(credits), cents


def format_price(cents, currency="usd"):
    if currency.lower() in ZERO_DECIMAL:
        return "%d %s" % (cents, currency.upper())
    return "%d.%02d %s" % (cents // 100, cents % 100, currency.upper())

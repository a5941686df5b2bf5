"""arcade qr: printable QR stickers that open a cabinet's pay page.

The QR holds the stable URL <ARCADE_PUBLIC_URL>/pay/<ID>, so prices and promotions can change without
reprinting. A sticker shows the cabinet's name, the QR, "Scan to play" and the lowest price per play
(the layout is relay/stickers.py).

    arcade qr cab1 --format png --out cab1.png
    arcade qr --all --format pdf --out stickers.pdf      (A4 sheets, four stickers a page)
    arcade qr --all --format png --out stickers/          (one file per cabinet)
"""
import argparse
import os
import sys

from relay import config, stickers as layout


def stickers_from_ledger(cfg, ids=None):
    """Stickers for the given cabinet ids (or all enabled cabinets) from the relay's database."""
    return layout.from_ledger(cfg, ids)


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade qr", description="Render printable QR stickers that open a cabinet's "
                                "pay page (<ARCADE_PUBLIC_URL>/pay/<ID>).")
    p.add_argument("cabinet", nargs="?", help="cabinet id")
    p.add_argument("--all", action="store_true", help="every enabled cabinet: A4 sheets (pdf) or one file each "
                   "(png/svg, --out is a directory)")
    p.add_argument("--format", choices=("png", "svg", "pdf"), default="png")
    p.add_argument("--out", help="output file (default <ID>.<format>, or stickers.pdf / ./stickers/ for --all)")
    p.add_argument("--public-url", help="the relay's public address (default: ARCADE_PUBLIC_URL)")
    args = p.parse_args(argv)
    if bool(args.cabinet) == bool(args.all):
        p.error("give one cabinet id, or --all")
    try:
        cfg = config.load(require_webhook_secret=False)
        if args.public_url:
            cfg["ARCADE_PUBLIC_URL"] = args.public_url
        stickers = stickers_from_ledger(cfg, None if args.all else [args.cabinet])
    except (config.ConfigError, LookupError, ValueError) as e:
        print("arcade qr: %s" % (e.args[0] if e.args else e), file=sys.stderr)
        return 2
    if not stickers:
        print("arcade qr: no enabled cabinets: add one with `arcade cabinet add ID --price 1.00`", file=sys.stderr)
        return 2
    if args.all and args.format in ("png", "svg"):
        out_dir = args.out or "stickers"
        os.makedirs(out_dir, exist_ok=True)
        for st in stickers:
            path = os.path.join(out_dir, "%s.%s" % (st.cabinet_id, args.format))
            _write(path, layout.render([st], args.format))
            print(path)
        return 0
    out = args.out or ("stickers.pdf" if args.all else "%s.%s" % (args.cabinet, args.format))
    _write(out, layout.render(stickers, args.format))
    print(out)
    return 0


def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())

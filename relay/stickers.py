"""QR stickers that open a cabinet's pay page: the layout, used by `arcade qr` (tools/commands/qr.py).

The QR holds the stable URL <ARCADE_PUBLIC_URL>/pay/<ID>, so prices and promotions can change without
reprinting. A sticker shows the cabinet's name, the QR, "Scan to play" and the lowest price per play.
"""
import html
import io
import os

import segno
from PIL import Image, ImageDraw, ImageFont

from relay import checkout, ledger
from relay.checkout import from_price, money  # noqa: F401 (from_price: callers import it from here)

DPI = 300
STICKER = (750, 1050)           # 2.5 x 3.5 inches at 300 dpi
A4 = (2480, 3508)               # A4 at 300 dpi
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu")


class Sticker:
    def __init__(self, cabinet_id, name, url, from_text):
        self.cabinet_id = cabinet_id
        self.name = name or cabinet_id
        self.url = url
        self.from_text = from_text      # e.g. "from $0.83" ("" when the cabinet has no prices)


def pay_url(public_url, cabinet_id):
    return "%s/pay/%s" % (public_url.rstrip("/"), cabinet_id)


def _font(size, bold=False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for d in FONT_DIRS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def _fit(draw, text, width, size, bold=False):
    """The largest font up to `size` in which `text` fits `width` pixels."""
    while size > 12:
        font = _font(size, bold)
        if draw.textlength(text, font=font) <= width:
            return font
        size -= 2
    return _font(size, bold)


def _qr(url):
    return segno.make(url, error="m", micro=False)


def sticker_image(st):
    w, h = STICKER
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((6, 6, w - 7, h - 7), radius=36, outline="black", width=6)
    title = _fit(d, st.name, w - 90, 64, bold=True)
    d.text((w / 2, 100), st.name, font=title, fill="black", anchor="mm")
    rows, scale, side, x0, y0 = _qr_layout(st.url, w)
    for y, row in enumerate(rows):
        for x, dark in enumerate(row):
            if dark:
                d.rectangle((x0 + x * scale, y0 + y * scale, x0 + (x + 1) * scale - 1, y0 + (y + 1) * scale - 1),
                            fill="black")
    y = y0 + side + 70
    d.text((w / 2, y), "Scan to play", font=_font(72, bold=True), fill="black", anchor="mm")
    if st.from_text:
        d.text((w / 2, y + 85), st.from_text, font=_fit(d, st.from_text, w - 90, 48), fill="black", anchor="mm")
    small = _fit(d, st.url, w - 90, 24)
    d.text((w / 2, h - 45), st.url, font=small, fill="#444444", anchor="mm")
    return img


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, "PNG", dpi=(DPI, DPI))
    return buf.getvalue()


def pdf_bytes(pages):
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", resolution=DPI, save_all=True, append_images=pages[1:])
    return buf.getvalue()


def sheets(stickers):
    """A4 pages with up to four stickers each (2 x 2), with cut space between them."""
    pages = []
    per_page = 4
    gap_x = (A4[0] - 2 * STICKER[0]) // 3
    gap_y = (A4[1] - 2 * STICKER[1]) // 3
    for i in range(0, len(stickers), per_page):
        page = Image.new("RGB", A4, "white")
        for j, st in enumerate(stickers[i:i + per_page]):
            col, row = j % 2, j // 2
            page.paste(sticker_image(st), (gap_x + col * (STICKER[0] + gap_x), gap_y + row * (STICKER[1] + gap_y)))
        pages.append(page)
    return pages


def _qr_layout(url, w):
    """The QR's modules (quiet zone included) and where they go on a sticker `w` wide:
    (rows, module size, side, left, top)."""
    rows = list(_qr(url).matrix_iter(scale=1, border=4))
    scale = (w - 110) // len(rows)
    side = len(rows) * scale
    return rows, scale, side, (w - side) // 2, 165


def svg_text(st):
    """The sticker as SVG: the QR as one path of unit squares, text as SVG text (sans-serif)."""
    w, h = STICKER
    rows, scale, side, x0, y0 = _qr_layout(st.url, w)
    path = []
    for y, row in enumerate(rows):
        x = 0
        while x < len(row):
            if row[x]:
                start = x
                while x < len(row) and row[x]:
                    x += 1
                path.append("M%d %dh%dv1h-%dz" % (start, y, x - start, x - start))
            else:
                x += 1
    esc = html.escape
    ty = y0 + side + 70
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%.2fin" height="%.2fin" viewBox="0 0 %d %d">'
        % (w / DPI, h / DPI, w, h),
        '<title>%s: scan to play</title>' % esc(st.name),
        '<rect x="3" y="3" width="%d" height="%d" rx="36" fill="#fff" stroke="#000" stroke-width="6"/>' % (w - 6, h - 6),
        '<text x="%d" y="100" font-family="DejaVu Sans, sans-serif" font-weight="bold" font-size="60" '
        'text-anchor="middle" dominant-baseline="middle">%s</text>' % (w // 2, esc(st.name)),
        '<rect x="%d" y="%d" width="%d" height="%d" fill="#fff"/>' % (x0, y0, side, side),
        '<path transform="translate(%d %d) scale(%d)" fill="#000" d="%s"/>' % (x0, y0, scale, "".join(path)),
        '<text x="%d" y="%d" font-family="DejaVu Sans, sans-serif" font-weight="bold" font-size="72" '
        'text-anchor="middle" dominant-baseline="middle">Scan to play</text>' % (w // 2, ty),
    ]
    if st.from_text:
        parts.append('<text x="%d" y="%d" font-family="DejaVu Sans, sans-serif" font-size="48" text-anchor="middle" '
                     'dominant-baseline="middle">%s</text>' % (w // 2, ty + 85, esc(st.from_text)))
    parts.append('<text x="%d" y="%d" font-family="DejaVu Sans, sans-serif" font-size="22" fill="#444" '
                 'text-anchor="middle" dominant-baseline="middle">%s</text>' % (w // 2, h - 45, esc(st.url)))
    parts.append("</svg>\n")
    return "\n".join(parts)


def render(stickers, fmt):
    """bytes of one file: a single sticker (png/svg/pdf) or, for several, A4 PDF sheets or one PNG sheet."""
    if fmt == "svg":
        if len(stickers) != 1:
            raise ValueError("SVG holds one sticker; use --out DIR for one file per cabinet")
        return svg_text(stickers[0]).encode()
    if fmt == "png":
        return png_bytes(sticker_image(stickers[0]) if len(stickers) == 1 else sheets(stickers)[0])
    if fmt == "pdf":
        return pdf_bytes([sticker_image(stickers[0])] if len(stickers) == 1 else sheets(stickers))
    raise ValueError("unknown format %r: png, svg or pdf" % fmt)


def from_ledger(cfg, ids=None):
    """Stickers for these cabinet ids, or every enabled cabinet, from the relay's database."""
    public = cfg.get("ARCADE_PUBLIC_URL")
    if not public:
        raise ValueError("ARCADE_PUBLIC_URL is not set: set it (environment or .env) to the address phones reach "
                         "the relay at, e.g. https://pay.my-arcade.com, or pass --public-url")
    with ledger.open_ledger(cfg["ARCADE_DB"]) as led:
        if ids:
            cabinets = []
            for cid in ids:
                cab = led.get_cabinet(cid)
                if cab is None:
                    raise LookupError("no cabinet %r: see `arcade cabinet list`" % cid)
                cabinets.append(cab)
        else:
            cabinets = [c for c in led.list_cabinets() if c["enabled"]]
    return [Sticker(c["id"], c["name"], pay_url(public, c["id"]),
                    from_price(checkout.options(c), c["currency"])) for c in cabinets]

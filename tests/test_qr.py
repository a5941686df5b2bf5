"""QR stickers: the generated images are decoded with a real decoder (zbarimg, Debian's zbar-tools)."""
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from PIL import Image, ImageDraw

from relay.ledger import open_ledger
from relay import stickers
from tools.commands import qr as qr_cmd

PUBLIC = "https://pay.pixel-palace.test"


def zbar(path):
    exe = shutil.which("zbarimg")
    if exe is None:
        pytest.fail("zbarimg is not installed: run `make setup` (installs zbar-tools with apt)")
    out = subprocess.run([exe, "--raw", "-q", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, "zbarimg found no code in %s: %s" % (path, out.stderr)
    return out.stdout.strip().splitlines()


@pytest.fixture
def env(tmp_path, monkeypatch):
    db = tmp_path / "arcade.db"
    with open_ledger(db) as led:
        led.add_cabinet("cab1", name="Galaga", price_cents=100, bundles=[(3, 250)])
        led.add_cabinet("cab2", name="Ms. Pac-Man", currency="eur", price_cents=200)
        led.add_cabinet("cab3", name="Tempest", price_cents=50)
        led.add_cabinet("old", name="Retired", price_cents=100)
        led.set_enabled("old", False)
    monkeypatch.chdir(tmp_path)       # no stray .env is read; outputs land here
    monkeypatch.setenv("ARCADE_DB", str(db))
    monkeypatch.setenv("ARCADE_PUBLIC_URL", PUBLIC + "/")
    return tmp_path


def test_png_sticker_decodes_to_the_stable_pay_url(env, capsys):
    out = env / "cab1.png"
    assert qr_cmd.main(["cab1", "--format", "png", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert zbar(out) == [PUBLIC + "/pay/cab1"]
    with Image.open(out) as img:
        assert img.size == stickers.STICKER and round(img.info["dpi"][0]) == 300


def test_default_output_name(env):
    assert qr_cmd.main(["cab2"]) == 0
    assert zbar(env / "cab2.png") == [PUBLIC + "/pay/cab2"]


def test_all_as_png_files_one_per_enabled_cabinet(env):
    assert qr_cmd.main(["--all", "--format", "png", "--out", str(env / "stickers")]) == 0
    files = sorted(p.name for p in (env / "stickers").iterdir())
    assert files == ["cab1.png", "cab2.png", "cab3.png"]
    for name in files:
        assert zbar(env / "stickers" / name) == [PUBLIC + "/pay/" + name[:-4]]


def test_all_as_a_pdf_sheet(env):
    out = env / "sheet.pdf"
    assert qr_cmd.main(["--all", "--format", "pdf", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 1          # three stickers fit one A4 page
    # The same sheet as PNG: every sticker on it decodes.
    png = env / "sheet.png"
    png.write_bytes(stickers.png_bytes(stickers.sheets(qr_cmd.stickers_from_ledger(
        {"ARCADE_DB": str(env / "arcade.db"), "ARCADE_PUBLIC_URL": PUBLIC}))[0]))
    assert sorted(zbar(png)) == [PUBLIC + "/pay/cab%d" % i for i in (1, 2, 3)]


def test_svg_sticker_has_the_text_and_a_qr_that_decodes(env):
    out = env / "cab1.svg"
    assert qr_cmd.main(["cab1", "--format", "svg", "--out", str(out)]) == 0
    root = ET.parse(out).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    texts = [t.text for t in root.findall("s:text", ns)]
    assert texts == ["Galaga", "Scan to play", "from $0.84 a play", PUBLIC + "/pay/cab1"]
    # Rasterise the QR path ourselves (M x y h n v1 h-n z runs) and decode it with zbar.
    path = [p for p in root.findall("s:path", ns)][0]
    tx, ty, scale = map(int, re.match(r"translate\((\d+) (\d+)\) scale\((\d+)\)", path.get("transform")).groups())
    img = Image.new("L", stickers.STICKER, 255)
    draw = ImageDraw.Draw(img)
    runs = re.findall(r"M(\d+) (\d+)h(\d+)v1h-\d+z", path.get("d"))
    assert runs
    for x, y, n in map(lambda r: tuple(map(int, r)), runs):
        draw.rectangle((tx + x * scale, ty + y * scale, tx + (x + n) * scale - 1, ty + (y + 1) * scale - 1), fill=0)
    raster = env / "svg-raster.png"
    img.save(raster)
    assert zbar(raster) == [PUBLIC + "/pay/cab1"]


@pytest.mark.parametrize("options, currency, text", [
    ([("1", 1, 100), ("3", 3, 250)], "usd", "from $0.84 a play"),
    ([("1", 1, 200)], "eur", "from \u20ac2.00 a play"),
    ([("1", 1, 100), ("10", 10, 500)], "jpy", "from \u00a550 a play"),
    ([], "usd", ""),
])
def test_from_price_is_the_lowest_price_per_play(options, currency, text):
    assert stickers.from_price(options, currency) == text


@pytest.mark.parametrize("argv, setup, message", [
    (["nope"], None, "no cabinet 'nope'"),
    (["cab1"], "no-url", "ARCADE_PUBLIC_URL is not set"),
    (["cab1"], "bad-url", "not an http(s):// address"),
    (["--all", "--format", "svg", "--out", "one.svg"], "empty", "no enabled cabinets"),
])
def test_errors_are_clear_and_write_nothing(env, monkeypatch, capsys, argv, setup, message):
    if setup == "no-url":
        monkeypatch.delenv("ARCADE_PUBLIC_URL")
    if setup == "bad-url":
        monkeypatch.setenv("ARCADE_PUBLIC_URL", "ftp://x")
    if setup == "empty":
        monkeypatch.setenv("ARCADE_DB", str(env / "empty.db"))
    before = set(p.name for p in env.iterdir())
    assert qr_cmd.main(argv) == 2
    assert message in capsys.readouterr().err
    assert set(p.name for p in env.iterdir()) - before <= {"empty.db", "empty.db-wal", "empty.db-shm"}


def test_needs_exactly_one_of_id_or_all(env, capsys):
    for argv in ([], ["cab1", "--all"]):
        with pytest.raises(SystemExit) as e:
            qr_cmd.main(argv)
        assert e.value.code == 2
    assert "give one cabinet id, or --all" in capsys.readouterr().err

"""The cabinet's screen on the host: the board profile's `display` checks, the pay-page QR that `arcade
provision` renders for each display size (decoded by zbarimg from what the fake panel's glass shows, at the
display's own resolution, scaled up pixel-exact), each screen's words found on the glass, and a screenshot
of every screen for every display size in test-artifacts/screens/."""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.hostsim import screen as hs
from tools.hostsim.boards import ProvisionError, fw_config

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "screens"
URL = "https://pay.example.com/pay/galaga-1"
KINDS = sorted(hs.KINDS) + ["st7789-135x240@90", "ssd1306@180"]
for p in (ROOT / "build" / "umqtt", ROOT / "tools" / "hostsim", ROOT / "firmware"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def zbarimg():
    exe = shutil.which("zbarimg")
    if exe is None:
        pytest.fail("zbarimg is not installed: run `make setup` (apt-get install zbar-tools)")
    return exe


def decode(png):
    out = subprocess.run([zbarimg(), "-q", "--raw", str(png)], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def checked(board, kind):
    fw = fw_config()
    raw = json.loads((ROOT / "boards" / (board + ".json")).read_text())
    raw["display"] = hs.display_block(board, kind)
    return fw.check_board(raw, "board.json")


def find_text(panel, text, scales=(1, 2, 3, 4)):
    """The scale at which `text` appears on the glass (lit on dark, MicroPython's font), else None.
    Independent of the layout: the words are searched for anywhere."""
    import framebuf
    w, h = panel.size()
    rows = ["".join("#" if panel.glass(x, y) != (0, 0, 0) else "." for x in range(w)) for y in range(h)]
    for k in scales:
        tw = len(text) * 8
        buf = bytearray((tw + 7) // 8 * 8)
        fb = framebuf.FrameBuffer(buf, tw, 8, framebuf.MONO_HLSB)
        fb.text(text, 0, 0, 1)
        pat = []
        for y in range(8):
            line = "".join("#" if fb.pixel(x, y) else "." for x in range(tw))
            pat += ["".join(ch * k for ch in line)] * k
        for y in range(h - len(pat) + 1):
            start = rows[y].find(pat[0])
            while start >= 0:
                if all(rows[y + i][start:start + len(pat[i])] == pat[i] for i in range(1, len(pat))):
                    return k
                start = rows[y].find(pat[0], start + 1)
    return None


@pytest.fixture
def fw():
    import machine
    machine.clear()
    yield
    machine.clear()


def _screen(tmp_path, board_name, kind, content=None):
    import display
    import panels
    d = checked(board_name, kind)["display"]
    (tmp_path / hs.QR_NAME).write_bytes(hs.qr_pbm(URL, d))
    panel = panels.attach(d)
    s = display.Screen(d, str(tmp_path) + "/", content or {"qr": hs.QR_NAME, "price": "from $0.84 a play",
                                                          "promo": "2 for 1 until 8pm"})
    assert s.error == "", s.error
    return s, panel


@pytest.mark.parametrize("kind", KINDS)
def test_the_attract_qr_decodes_at_the_display_resolution(kind, tmp_path, fw):
    import display
    s, panel = _screen(tmp_path, "esp32-devkitc", kind)
    s.show(display.ATTRACT)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = hs.png(panel, ARTIFACTS / ("%s-attract.png" % kind.replace("@", "-rot")), scale=4)
    assert decode(png) == URL, "zbarimg could not read the QR on the %s" % kind
    assert find_text(panel, "Scan to play") or find_text(panel, "Scan to"), "the call to action is shown"


SCREENS = [  # (state, args, words that must be on the glass)
    ("OFFLINE", (), ["Coins only"]),
    ("BUSY", (), ["Game busy"]),
    ("HELD", (3,), ["Paid", "3 credits"]),
    ("PAY", (2, 6, 3), ["Paid", "3 credits", "coin 2 of 6"]),
    ("DONE", (3,), ["Press START"]),
    ("SAFE", (), ["SAFE MODE"]),
    ("BOOT", (), ["Starting"]),
]


@pytest.mark.parametrize("kind", sorted(hs.KINDS))
def test_every_screen_says_what_it_should(kind, tmp_path, fw):
    import display
    s, panel = _screen(tmp_path, "esp32-s3-devkitc", kind)
    for state, args, words in SCREENS:
        s.show(getattr(display, state), *args)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        hs.png(panel, ARTIFACTS / ("%s-%s.png" % (kind, state.lower())), scale=4)
        for phrase in words:
            # a phrase may wrap on a narrow panel: then each of its words is on the glass
            assert find_text(panel, phrase) or all(find_text(panel, x) for x in phrase.split()), \
                "%s on the %s: %r is not on the glass" % (state, kind, phrase)


def test_a_rotated_panel_shows_the_same_picture(tmp_path, fw):
    import display
    pictures = {}
    for kind in ("st7789-240x240", "st7789-240x240@90", "st7789-240x240@180", "st7789-240x240@270",
                 "ssd1306", "ssd1306@180", "sh1106", "sh1106@180"):
        import machine
        machine.clear()
        s, panel = _screen(tmp_path, "esp32-devkitc", kind)
        s.show(display.ATTRACT)
        w, h = panel.size()
        pictures[kind] = [panel.glass(x, y) != (0, 0, 0) for y in range(h) for x in range(w)]
    assert pictures["st7789-240x240"] == pictures["st7789-240x240@90"] == pictures["st7789-240x240@180"] \
        == pictures["st7789-240x240@270"]
    assert pictures["ssd1306"] == pictures["ssd1306@180"] == pictures["sh1106"] == pictures["sh1106@180"]


def test_a_url_too_long_for_the_screen_is_a_clear_error():
    d = checked("esp32-devkitc", "ssd1306")["display"]
    with pytest.raises(ProvisionError, match="more than the 64 pixels"):
        hs.qr_pbm("https://pay.example.com/" + "x" * 400 + "/pay/galaga-1", d)


def _bad_rows():
    D = "esp32-devkitc"
    oled = {"driver": "ssd1306", "bus": "i2c", "width": 128, "height": 64, "pins": {"sda": 21, "scl": 22}}
    tft = {"driver": "st7789", "bus": "spi", "width": 240, "height": 240,
           "pins": {"sck": 18, "mosi": 23, "cs": 32, "dc": 33}}

    def w(base, **kw):
        d = copy.deepcopy(base)
        for k, v in kw.items():
            if k == "pins" and v is not None:
                d["pins"].update(v)
            else:
                d[k] = v
        return d
    return [
        (D, "x", "display", "an object"),
        (D, w(oled, driver="ili9341"), "display.driver", "one of sh1106, ssd1306, st7789"),
        (D, w(oled, bus="spi"), "display.bus", "\"i2c\" for the ssd1306"),
        (D, w(oled, height=48), "display.width", "128x64, 128x32"),
        (D, w(tft, width=320), "display.width", "240x240, 135x240"),
        (D, w(oled, rotation=90), "display.rotation", "one of 0, 180"),
        (D, w(tft, rotation=45), "display.rotation", "0, 90, 180, 270"),
        (D, w(oled, pins=None), "display.pins", "an object"),
        (D, w(oled, pins={"cs": 5}), "display.pins", "only sda, scl"),
        (D, w(oled, pins={"sda": 25}), "display.pins.sda", "already used"),
        (D, w(oled, pins={"scl": 2}), "display.pins.scl", "strapping"),
        (D, w(oled, pins={"scl": 7}), "display.pins.scl", "flash"),
        (D, w(oled, pins={"sda": 36}), "display.pins.sda", "input-only"),
        (D, w(oled, pins={"sda": 22}), "display.pins.scl", "already used"),
        (D, w(tft, pins={"dc": None}), "display.pins.dc", "not a GPIO"),
        (D, w(oled, addr=0x80), "display.addr", "from 8 to 119"),
        (D, w(tft, freq=100), "display.freq", "from 1000000"),
        ("esp32-c3", w(oled, pins={"sda": 18}), "display.pins.sda", "USB"),
    ]


@pytest.mark.parametrize("board, display, key, words", _bad_rows(),
                         ids=["%s-%s" % (r[2], r[3].split()[0]) + str(i) for i, r in enumerate(_bad_rows())])
def test_each_way_to_get_the_display_wrong_is_one_clear_error(board, display, key, words):
    fw = fw_config()
    raw = json.loads((ROOT / "boards" / (board + ".json")).read_text())
    raw["display"] = display
    before = json.dumps(raw, sort_keys=True)
    with pytest.raises(fw.ConfigError) as e:
        fw.check_board(raw, "board.json")
    msg = str(e.value)
    assert msg.startswith("board.json: '%s'" % key), msg
    assert words in msg, msg
    assert json.dumps(raw, sort_keys=True) == before


@pytest.mark.parametrize("board", sorted(hs.WIRING))
def test_the_suggested_wiring_passes_every_board_check(board):
    for kind in hs.KINDS:
        d = checked(board, kind)["display"]
        assert d["driver"] == hs.KINDS[kind][0]


# -- arcade provision --display: the files the board gets, drawn by the firmware, decoded by zbarimg

@pytest.fixture
def prov(tmp_path, monkeypatch):
    from relay.ledger import open_ledger
    db = str(tmp_path / "arcade.db")
    monkeypatch.setenv("ARCADE_DB", db)
    monkeypatch.delenv("ARCADE_PUBLIC_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    with open_ledger(db) as ledger:
        ledger.add_cabinet("galaga-1", price_cents=100)
    return tmp_path


def _provision(capsys, tmp_path, *extra):
    from tools import cli
    code = cli.main(["provision", "galaga-1", "--board", "esp32-c3", "--wifi-ssid", "Arcade",
                     "--wifi-password", "pw-123456", "--broker", "mqtt://relay:pw@192.168.1.5",
                     "--out", str(tmp_path / "build")] + list(extra))
    out, err = capsys.readouterr()
    return code, out, err


def test_provision_writes_the_qr_the_board_draws_and_a_phone_reads(prov, capsys, fw):
    import display
    import panels
    code, out, err = _provision(capsys, prov, "--display", "sh1106@180",
                                "--public-url", "https://pay.example.com/")
    assert code == 0, err
    d = prov / "build" / "galaga-1"
    assert sorted(p.name for p in d.iterdir()) == ["board.json", "config.json", "qr.pbm"]
    assert "qr.pbm" in out
    fw_ = fw_config()
    board = fw_.load_board(str(d) + "/")
    cfg = fw_.load_config(str(d) + "/", board)
    assert board["display"]["driver"] == "sh1106" and board["display"]["rotation"] == 180
    assert cfg["screen"] == {"qr": "qr.pbm", "price": "from $1.00 a play"}
    w, h, rows = hs.read_pbm((d / "qr.pbm").read_bytes())
    assert w == h <= 64
    panel = panels.attach(board["display"])
    s = display.Screen(board["display"], str(d) + "/", cfg["screen"])
    s.show(display.ATTRACT)
    png = hs.png(panel, prov / "shown.png")
    assert decode(png) == "https://pay.example.com/pay/galaga-1"
    assert find_text(panel, "$1.00")


def test_provision_with_a_screen_needs_the_public_url_and_writes_nothing(prov, capsys):
    code, out, err = _provision(capsys, prov, "--display", "ssd1306")
    assert code == 2 and "ARCADE_PUBLIC_URL" in err
    assert not (prov / "build" / "galaga-1").exists()
    code, out, err = _provision(capsys, prov, "--display", "ili9341", "--public-url", "https://p.example")
    assert code == 2 and "unknown display 'ili9341'" in err
    code, out, err = _provision(capsys, prov, "--display", "ssd1306@90", "--public-url", "https://p.example")
    assert code == 2 and "'display.rotation' must be one of 0, 180" in err
    assert not (prov / "build" / "galaga-1").exists()


def test_provision_without_a_screen_drops_an_old_qr(prov, capsys):
    code, out, err = _provision(capsys, prov, "--display", "ssd1306", "--public-url", "https://p.example")
    assert code == 0, err
    code, out, err = _provision(capsys, prov)
    assert code == 0, err
    d = prov / "build" / "galaga-1"
    assert sorted(p.name for p in d.iterdir()) == ["board.json", "config.json"]
    assert "screen" not in json.loads((d / "config.json").read_text())


def test_the_wiring_table_in_the_docs_is_the_one_provision_uses():
    doc = (ROOT / "docs" / "hardware.md").read_text()
    for board, w in hs.WIRING.items():
        i2c = "GPIO %d, %d" % (w["i2c"]["sda"], w["i2c"]["scl"])
        spi = "GPIO " + ", ".join("none" if w["spi"][k] is None else str(w["spi"][k])
                                  for k in ("sck", "mosi", "cs", "dc", "rst", "bl"))
        row = [ln for ln in doc.splitlines() if ln.startswith("| `%s` | GPIO" % board)]
        assert len(row) == 1, board
        assert "| %s |" % i2c in row[0] and spi in row[0], (row[0], i2c, spi)


def test_micropython_draws_every_screen_pixel_for_pixel_like_the_host(tmp_path, fw):
    """The same screens drawn by MicroPython's real framebuf (WebAssembly VM) and by the host's stand-in
    (tests, `arcade simulate`): the glass must be identical, font included."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; run `make setup` (apt-get install nodejs npm)")
    sys.path.insert(0, str(ROOT / "tests" / "fw"))
    try:
        import screendump
    finally:
        sys.path.remove(str(ROOT / "tests" / "fw"))
    qr = hs.qr_pbm(URL, checked("esp32-devkitc", "ssd1306")["display"])
    proc = subprocess.run([node, str(ROOT / "tools" / "mpy" / "vm" / "run.mjs"), "--script",
                           "tests/fw/screendump.py", "--", "/tmp/", qr.hex()],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    on_mpy = [ln for ln in proc.stdout.splitlines() if ln.startswith("GLASS ")]
    (tmp_path / "qr.pbm").write_bytes(qr)
    on_host = []
    for kind in sorted(screendump.KINDS):
        on_host += screendump.dump(str(tmp_path) + "/", kind, {"qr": "qr.pbm", "price": "from $0.84 a play",
                                                               "promo": "2 for 1"})
    assert len(on_mpy) == len(on_host) == 8
    for a, b in zip(on_mpy, on_host):
        assert a.split()[:3] == b.split()[:3]
        assert a == b, "%s differs between MicroPython and the host" % " ".join(a.split()[1:3])
        assert set(a.split()[3]) != {"0"}, "something was drawn"

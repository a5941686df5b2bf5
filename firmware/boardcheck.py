# Board profile checks (config.check_board loads this module for the check and drops it again).
# A bad pin, level, timing or missing key is one ConfigError naming the key and the reason.
import json
from checks import ConfigError, bad, integer, string

# Per chip: (GPIOs that exist, strapping pins, reserved pins: flash/PSRAM, USB-JTAG, the UART0
# console, input-only pins). The coin line must avoid all of them; other inputs avoid the
# reserved ones and the strapping ones (an outside circuit on a strapping pin can change the boot mode).
_CHIPS = {
    "esp32": (tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40)),
              (0, 2, 5, 12, 15), (1, 3, 6, 7, 8, 9, 10, 11), (34, 35, 36, 37, 38, 39)),
    "esp32c3": (tuple(range(0, 22)), (2, 8, 9), tuple(range(11, 22)), ()),
    # S3: 33..37 carry octal flash/PSRAM on the N8R8/N16R8 modules, so they count as reserved
    "esp32s3": (tuple(range(0, 22)) + tuple(range(26, 49)), (0, 3, 45, 46),
                (19, 20) + tuple(range(26, 38)) + (43, 44), ()),
}
_PINS = (("coin_pin", "output"), ("led_pin", "led"), ("inhibit_pin", "input"),
         ("meter_pin", "input"), ("safe_pin", "safe"))


def chip(machine):
    """The chip named by sys.implementation._machine ('Generic ESP32S3 module with ESP32S3' ->
    'esp32s3'); '' when it names no ESP32 (the host, WebAssembly)."""
    i = machine.rfind(" with ESP32")
    return machine[i + 6:].strip().lower() if i >= 0 else ""


def same_chip(b, src, machine):
    c = chip(machine)
    if c and c != b["chip"]:
        raise ConfigError("%s: 'chip' is %s but this board is an %s (%s): the coin pin is not driven. "
                          "Provision it again with the profile for its chip (`arcade provision "
                          "--board`), then flash" % (src, json.dumps(b["chip"]), c.upper(), machine))


def _pin(src, k, pin, kind, chip, used, unsafe=()):
    """Check one GPIO for its use (kind: output, led, input, or display: an output that must not be a
    strapping pin either); then count it as used. One ConfigError naming the key and the reason."""
    exist, strap, reserved, in_only = _CHIPS[chip]
    out = kind in ("output", "led", "display")
    why = ""
    if not isinstance(pin, int) or isinstance(pin, bool) or pin not in exist:
        why = "not a GPIO of the %s" % chip
    elif pin in reserved:
        why = "reserved on the %s (flash/PSRAM, USB or the serial console)" % chip
    elif kind == "output" and pin in strap:
        why = "a strapping pin of the %s: it is sampled and may glitch at reset" % chip
    elif out and pin in in_only:
        why = "input-only on the %s" % chip
    elif kind == "output" and pin in unsafe:
        why = "listed in this board's unsafe_pins %s" % json.dumps(unsafe)
    elif kind in ("input", "display") and pin in strap:
        why = "a strapping pin of the %s: a circuit on it can change the boot mode" % chip
    elif pin in used:
        why = "already used by another pin key"
    if why:
        raise ConfigError("%s: '%s' %s is %s; choose another GPIO" % (src, k, json.dumps(pin), why))
    used.append(pin)


def _level(b, src, k):
    if b[k] not in ("high", "low"):
        raise bad(src, k, "\"high\" or \"low\"", b[k])


def check(d, src):
    """config.check_board: validate a board profile; returns it with defaults filled."""
    b = {"active": "high", "width_ms": 100, "gap_ms": 150, "led_pin": None, "led_active": "high",
         "inhibit_pin": None, "inhibit_active": "low", "inhibit_pull": "up", "meter_pin": None,
         "meter_active": "low", "safe_pin": None, "safe_active": "low", "safe_window_ms": 1000,
         "unsafe_pins": []}
    for k in d:
        b[k] = d[k]
    string(b, src, "name", 1, 64)
    chip = b.get("chip")
    if chip not in _CHIPS:
        raise bad(src, "chip", "one of %s" % ", ".join(sorted(_CHIPS)), chip)
    exist, strap, reserved, in_only = _CHIPS[chip]
    u = b["unsafe_pins"]
    if not isinstance(u, list):
        raise bad(src, "unsafe_pins", "a list of GPIO numbers", u)
    used = []
    for k, kind in _PINS:
        pin = b.get(k)
        if pin is None and kind != "output":
            continue
        _pin(src, k, pin, kind, chip, used, u)
    for k in ("active", "led_active", "inhibit_active", "meter_active", "safe_active"):
        _level(b, src, k)
    p = b["inhibit_pull"]
    if p not in ("up", "down", None):
        raise bad(src, "inhibit_pull", "\"up\", \"down\" or null (external resistor)", p)
    if p is not None and b["inhibit_pin"] in in_only:
        raise bad(src, "inhibit_pull", "null: GPIO %d has no internal pull resistor, fit an "
                   "external one" % b["inhibit_pin"], p)
    for k in ("width_ms", "gap_ms"):
        rng = b.get(k + "_range", [20, 2000])
        if (not isinstance(rng, list) or len(rng) != 2 or not isinstance(rng[0], int)
                or not isinstance(rng[1], int) or not 1 <= rng[0] <= rng[1] <= 10000):
            raise bad(src, k + "_range", "[min, max] in ms with 1 <= min <= max <= 10000", rng)
        b[k + "_range"] = rng
        integer(b, src, k, rng[0], rng[1])
    integer(b, src, "safe_window_ms", 0, 10000)
    if b.get("display") is not None:
        b["display"] = _display(b["display"], src, chip, used)
    return b


# display drivers: (bus, allowed native sizes, allowed rotations)
_DRIVERS = {
    "ssd1306": ("i2c", ((128, 64), (128, 32)), (0, 180)),
    "sh1106": ("i2c", ((128, 64),), (0, 180)),
    "st7789": ("spi", ((240, 240), (135, 240)), (0, 90, 180, 270)),
}
_BUS_PINS = {"i2c": ("sda", "scl"), "spi": ("sck", "mosi", "cs", "dc", "rst", "bl")}
_OPTIONAL = ("rst", "bl")


def _display(d, src, chip, used):
    """The optional `display` object: driver, bus, pins, size, rotation (docs/hardware.md)."""
    if not isinstance(d, dict):
        raise bad(src, "display", "an object {driver, bus, pins, width, height, rotation} or null", d)
    k = "display.driver"
    drv = d.get("driver")
    if drv not in _DRIVERS:
        raise bad(src, k, "one of %s" % ", ".join(sorted(_DRIVERS)), drv)
    bus, sizes, rots = _DRIVERS[drv]
    if d.get("bus") != bus:
        raise bad(src, "display.bus", "\"%s\" for the %s" % (bus, drv), d.get("bus"))
    size = [d.get("width"), d.get("height")]
    if tuple(size) not in sizes:
        raise bad(src, "display.width", "with display.height one of %s for the %s (the panel's "
                   "native size; rotation turns it)" % (", ".join("%dx%d" % s for s in sizes), drv),
                  size)
    r = d.get("rotation", 0)
    if r not in rots or isinstance(r, bool):
        raise bad(src, "display.rotation", "one of %s for the %s"
                  % (", ".join(str(x) for x in rots), drv), r)
    pins = d.get("pins")
    names = _BUS_PINS[bus]
    if not isinstance(pins, dict):
        raise bad(src, "display.pins", "an object with %s" % ", ".join(names), pins)
    for n in pins:
        if n not in names:
            raise bad(src, "display.pins", "only %s for an %s display" % (", ".join(names), bus), n)
    for n in names:
        pin = pins.get(n)
        if pin is not None or n not in _OPTIONAL:
            _pin(src, "display.pins." + n, pin, "display", chip, used)
    out = {"driver": drv, "bus": bus, "width": size[0], "height": size[1], "rotation": r,
           "pins": pins}
    if bus == "i2c":
        out["addr"] = _num(d, src, "addr", 0x3C, 0x08, 0x77)
        out["freq"] = _num(d, src, "freq", 400000, 10000, 1000000)
    else:
        out["freq"] = _num(d, src, "freq", 26000000, 1000000, 80000000)
    return out


def _num(d, src, k, default, lo, hi):
    v = d.get(k, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise bad(src, "display." + k, "an integer from %d to %d" % (lo, hi), v)
    return v

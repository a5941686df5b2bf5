# A message bigger than the cabinet can hold (issue 9, attack 3) is drained in small reads,
# PUBACKed and dropped; a MemoryError in the loop is a reconnect, never a reset.

import machine
import fwmsgs
import inbound
import app as fwapp
import config
from coin import Coin
from fwutil import (EPOCH, KEY, LEDGER, FakeSock, board, clock, mqtt_publish, pulses, scratch)
from fwutil import config as good_config

BIG = 100 * 1024


class ReadSizes(FakeSock):
    """FakeSock that records the largest read asked of it (and reads without copying the rest)."""

    def __init__(self, incoming=b""):
        FakeSock.__init__(self)
        self.data = bytes(incoming)
        self.at = 0
        self.largest = 0

    def read(self, n):
        self.largest = max(self.largest, n)
        if self.at >= len(self.data):
            return b"" if self.blocking else None
        b = self.data[self.at:self.at + n]
        self.at += len(b)
        return b


def _app(root):
    c = clock()
    b = config.check_board(board())
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    events = []
    a = fwapp.App(config.check_config(good_config()), b, coin, root,
                  lambda e, d: events.append((e, d)))
    return a, events


def test_oversized_retained_config_and_queued_credit_are_drained_pubacked_and_dropped():
    a, events = _app(scratch())
    before = inbound.dropped
    retained = bytearray(mqtt_publish(b"arcade/cab1/config", b"{" + b"x" * BIG + b"}", pid=3))
    retained[0] |= 1                                  # the retain flag, as the broker sends it
    junk_credit = mqtt_publish(b"arcade/cab1/credit", b'{"t":"credit",' + b" " * BIG + b"}", pid=4)
    good = fwmsgs.credit(KEY, "cab1", LEDGER, 1, 1, 2, "cs_after_the_flood", 1764165000, EPOCH)
    raw = ReadSizes(bytes(retained) + junk_credit + mqtt_publish(b"arcade/cab1/credit", good, pid=5))
    a.client.sock = fwapp.DeadlineSocket(raw, 5)
    for _ in range(3):
        a.client.check_msg()
    out = bytes(raw.out)
    for pid in (3, 4, 5):
        assert bytes([0x40, 2, 0, pid]) in out, "PUBACK for pid %d: the broker must forget it" % pid
    assert raw.largest <= inbound.MAX_MSG, "one read of %d bytes" % raw.largest
    assert inbound.dropped == before + 2
    assert [p[1] for p in pulses(machine.pins[25])] == [100, 100], "the next real credit pulses"
    assert a.cabinet.cfg["ver"] == 0 and a.cabinet.cfg_error == "", "a dropped config changes nothing"
    assert a.outbox == [], "a dropped credit is not answered"
    assert a.info()["dropped"] == inbound.dropped
    assert a.cabinet.state["last"] == 1


def test_a_message_at_the_bound_is_read_whole_and_a_lying_length_is_a_link_error():
    raw = ReadSizes(b"y" * inbound.MAX_MSG)
    assert inbound.read(raw, inbound.MAX_MSG) == b"y" * inbound.MAX_MSG
    for n in (-5, 10):       # a negative remaining length; EOF mid-message
        try:
            inbound.read(ReadSizes(b"abc"), n)
            assert False, n
        except OSError:
            pass


class _Stop(Exception):
    pass


def test_memory_error_in_the_loop_is_a_reconnect_not_a_reset():
    a, events = _app(scratch())

    def no_memory():
        raise MemoryError("memory allocation failed, allocating 102400 bytes")

    def stop(ms):
        raise _Stop()

    a._wifi = no_memory
    a._sleep = stop                                  # the backoff before the next try
    try:
        a.run()
        assert False, "run() returned"
    except _Stop:
        pass
    kinds = [e for e, _ in events]
    assert kinds == ["boot", "disconnected"], kinds
    assert "MemoryError" in events[1][1]

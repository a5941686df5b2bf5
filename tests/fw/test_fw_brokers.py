# config.json `broker` as a list (a broker cluster's nodes): parsed compactly, rotated on failure.
import app as fwapp
import config
from coin import Coin
from fwutil import board, clock, scratch, write_json
from fwutil import config as good_config

NODES = ["mqtt://cab1:pw-123456@n1.example:4001", "mqtt://cab1:pw-123456@n2.example:4002",
         "mqtt://cab1:pw-123456@10.0.0.3"]


def _err(d):
    try:
        config.check_config(d)
    except config.ConfigError as e:
        return str(e)
    return None


def test_a_list_of_brokers_is_one_login_and_a_tuple_of_hosts():
    m = config.check_config(good_config(broker=NODES))["mqtt"]
    assert (m["host"], m["port"], m["user"], m["password"], m["ssl"]) == ("n1.example", 4001, "cab1",
                                                                          "pw-123456", False)
    assert m["hosts"] == (("n1.example", 4001), ("n2.example", 4002), ("10.0.0.3", 1883))
    one = config.check_config(good_config(broker=NODES[:1]))["mqtt"]
    assert "hosts" not in one, "a list of one is one broker"
    assert "hosts" not in config.check_config(good_config())["mqtt"]


def test_bad_broker_lists_are_named_without_the_password():
    rows = [[], NODES + ["mqtt://cab1:pw-123456@n4", "mqtt://cab1:pw-123456@n5"], [NODES[0], "mqtts://cab1:pw-123456@n2"],
            [NODES[0], "mqtt://cab2:pw-123456@n2"], [NODES[0], "mqtt://cab1:other-pw@n2"],
            [NODES[0], "http://n2"], [NODES[0], 7]]
    for v in rows:
        msg = _err(good_config(broker=v))
        assert msg is not None and "'broker'" in msg, (v, msg)
        assert "other-pw" not in msg and "pw-123456" not in msg, msg


class _Stop(Exception):
    pass


def test_each_failed_connect_moves_to_the_next_node_and_wraps():
    root = scratch()
    write_json(root + "board.json", board())
    c = clock()
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    events = []
    a = fwapp.App(config.check_config(good_config(broker=NODES)), config.check_board(board()), coin, root,
                  lambda e, d: events.append((e, d)))
    tried = []

    def refused():
        tried.append((a.client.server, a.client.port))
        raise OSError(111)

    def backoff(ms):
        if len(tried) >= 4:
            raise _Stop()

    a._wifi = lambda: None
    a._connect = refused
    a._sleep = backoff
    try:
        a.run()
        assert False, "run() returned"
    except _Stop:
        pass
    assert tried == [("n1.example", 4001), ("n2.example", 4002), ("10.0.0.3", 1883), ("n1.example", 4001)], tried
    assert [e for e, _ in events].count("disconnected") == 4

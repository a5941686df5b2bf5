"""tools/lab/tcpproxy.py: forwards, blackholes without closing (holding bytes and FINs), resumes in order."""
import socket

import pytest

from tools.lab.tcpproxy import TcpProxy

WAIT = 10.0


@pytest.fixture
def target():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(WAIT)
    opened = []
    yield srv, opened
    for s in opened:
        s.close()
    srv.close()


def dial(proxy, target):
    """A client through the proxy and the proxy's connection as the target accepted it."""
    srv, opened = target
    before = proxy.opened
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
    opened.append(client)
    upstream, _ = srv.accept()
    upstream.settimeout(WAIT)
    opened.append(upstream)
    # the target may accept before the proxy has filed the link: wait until it has
    proxy.wait_for(lambda p: p.opened > before, WAIT, "the link filed")
    return client, upstream


def recv_exactly(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "closed after %r" % buf
        buf += chunk
    return buf


def nothing_waiting(sock):
    """True if no byte and no FIN is waiting on sock (a non-blocking peek)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
        return False
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(WAIT)


def test_forwards_both_ways_and_passes_a_close_on(target):
    with TcpProxy(target[0].getsockname()[1]) as proxy:
        client, upstream = dial(proxy, target)
        client.sendall(b"CONNECT")
        assert recv_exactly(upstream, 7) == b"CONNECT"
        upstream.sendall(b"CONNACK")
        assert recv_exactly(client, 7) == b"CONNACK"
        proxy.wait_for(lambda p: p.forwarded == 14, WAIT, "14 bytes counted")
        assert proxy.held == 0 and proxy.opened == 1
        client.shutdown(socket.SHUT_WR)
        assert upstream.recv(1) == b"", "the client's FIN reaches the target"
        upstream.close()
        assert client.recv(1) == b""
        proxy.wait_for(lambda p: p.closed == 1, WAIT, "the link closed")
        assert proxy.open_links() == 0


def test_blackhole_holds_bytes_and_fin_in_both_directions_and_resume_delivers_them_in_order(target):
    with TcpProxy(target[0].getsockname()[1]) as proxy:
        client, upstream = dial(proxy, target)
        client.sendall(b"before")
        assert recv_exactly(upstream, 6) == b"before"
        proxy.blackhole()
        client.sendall(b"PINGREQ")
        upstream.sendall(b"PUBLISH")
        client.shutdown(socket.SHUT_WR)
        # the proxy has taken both messages and the FIN off the wire and delivered none of them
        proxy.wait_for(lambda p: p.held == 14 and p.ended == 1, WAIT, "14 held bytes and a held FIN")
        assert proxy.forwarded == 6
        assert nothing_waiting(upstream) and nothing_waiting(client)
        assert proxy.open_links() == 1, "nothing was closed"
        assert [e[1:] for e in proxy.events if e[1] == "end"] == [("end", 1, "client")], "the held FIN is on record"
        proxy.resume()
        assert recv_exactly(upstream, 7) == b"PINGREQ"
        assert recv_exactly(client, 7) == b"PUBLISH"
        assert upstream.recv(1) == b"", "the held FIN follows the held bytes"
        upstream.sendall(b"after")
        assert recv_exactly(client, 5) == b"after", "forwarding goes on after resume"


def test_a_new_connection_gets_through_unless_new_ones_are_blackholed_too(target):
    with TcpProxy(target[0].getsockname()[1]) as proxy:
        old_client, old_up = dial(proxy, target)
        proxy.blackhole()
        new_client, new_up = dial(proxy, target)
        new_client.sendall(b"redial")
        assert recv_exactly(new_up, 6) == b"redial", "a redial gets a fresh path"
        old_client.sendall(b"x")
        proxy.wait_for(lambda p: p.held == 1, WAIT, "the old link's byte held")
        assert nothing_waiting(old_up)

        proxy.blackhole(new=True)
        third_client, third_up = dial(proxy, target)       # accepted and connected, then silent
        third_client.sendall(b"lost")
        proxy.wait_for(lambda p: p.held == 1 + 4, WAIT, "the new link's bytes held")
        assert nothing_waiting(third_up) and nothing_waiting(new_up)
        assert proxy.opened == 3 and proxy.open_links() == 3
        proxy.resume()
        assert recv_exactly(third_up, 4) == b"lost"


def test_a_refused_target_closes_the_client_and_stop_closes_every_link(target):
    srv, opened = target
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                    # nothing listens on this port now
    with TcpProxy(port) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
        opened.append(client)
        assert client.recv(1) == b""
        assert proxy.wait_for(lambda p: p.refused == 1, WAIT, "a refused dial")
        assert proxy.opened == 0

    proxy = TcpProxy(srv.getsockname()[1]).start()
    client, upstream = dial(proxy, target)
    proxy.blackhole()
    proxy.stop()
    assert upstream.recv(1) == b"" and client.recv(1) == b"", "stopping the proxy closes both ends"

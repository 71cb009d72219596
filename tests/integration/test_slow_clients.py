"""Slow clients cannot starve a tenant (issue 18): once a request on a kept-alive connection is
served, the worker waits only a moment for the next head; a head that does not come whole goes
back to the multiplexers with the connection, and the worker takes the next connection."""
import http.client
import socket
import time

import pytest

from harness import read_until_close, request_on, serving
from test_end_to_end import CGI, ids_of
from test_hostile_clients import start


# test_hostile_clients' server (one multiplexer, env-a and env-b, MinSpareProcessors 0) with two
# workers per environment, a short wait for one, and idle connections held long.
SLOW = """MaxProcessors 2
ProcessorWaitTimeout 2
MultiplexerHeadTimeout 30
KeepAliveTimeout 30"""


@pytest.fixture(scope="module")
def slow(module, accounts):
    apache = start(accounts, SLOW)
    yield from serving(apache)


def get_from(source, port, host, path=CGI):
    """A request from another loopback address (another client)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    started = time.monotonic()
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    return resp.status, body, time.monotonic() - started


def test_trickled_kept_alive_heads_do_not_hold_the_workers(slow, accounts):
    # Twelve clients of tenant A, with two workers: each has one request served, then sends
    # the start of its next head and stalls.
    stalled = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", slow.port), timeout=20)
            assert request_on(sock, "a.test")[0] == 200
            sock.sendall(b"GET /cgi-bin/id.cgi HTTP/1.1\r\nHo")
            stalled.append(sock)
        time.sleep(1)
        # Another client of A is served at once (before: every worker waited on a stalled
        # head, and this request got 503 after ProcessorWaitTimeout), and so is tenant B.
        for host, user in (("a.test", "peruser-a"), ("b.test", "peruser-b")):
            status, body, took = get_from("127.0.0.2", slow.port, host)
            assert status == 200, (host, status, body)
            assert ids_of(body)[0] == accounts[user][0]
            assert took < 2, f"{host} waited {took:.1f} s"
        # The stalled heads, once whole, are served in tenant A's environment.
        for sock in stalled:
            sock.sendall(b"st: a.test\r\n\r\n")
            sock.settimeout(20)
            f = sock.makefile("rb")
            status = int(f.readline().split()[1])
            assert status == 200
    finally:
        for sock in stalled:
            sock.close()
    assert "killed by signal" not in slow.read_error_log()


def test_a_kept_alive_client_that_pauses_is_still_served(slow, accounts):
    # Longer than a worker waits for the next head: this connection went back to the
    # multiplexers in between and is served again as it was.
    with socket.create_connection(("127.0.0.1", slow.port), timeout=20) as sock:
        for pause in (0, 0.3, 1.0, 0):
            time.sleep(pause)
            status, _, body = request_on(sock, "a.test")
            assert status == 200, body
            assert ids_of(body)[0] == accounts["peruser-a"][0]
        # And to the other tenant on the same connection, after a pause.
        time.sleep(0.3)
        status, _, body = request_on(sock, "b.test")
        assert status == 200, body
        assert ids_of(body)[0] == accounts["peruser-b"][0]


def test_pipelined_requests_are_answered_in_order(slow, accounts):
    with socket.create_connection(("127.0.0.1", slow.port), timeout=20) as sock:
        sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n"
                     b"GET /index.html HTTP/1.1\r\nHost: b.test\r\n\r\n"
                     b"GET /index.html HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = read_until_close(sock)
    bodies = [part for part in data.split(b"\r\n\r\n")[1:] if part.startswith(b"site ")]
    assert [b[:6] for b in bodies] == [b"site a", b"site b", b"site a"], data

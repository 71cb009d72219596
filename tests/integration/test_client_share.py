"""MaxClientShare counts each of a client's connections once, whichever multiplexer sent it.

A multiplexer reserves a hand-off against its client's share and releases the reservation
only when it next looks at what it sent. A hand-off a worker has taken is also on that
worker's page, so until then it counted twice; and while the multiplexer that sent it was
off the CPU, another multiplexer held the client's next connection against a share its
workers no longer used (at MaxClientShare 99 one busy address on `Connection: close` lost
15 % of its throughput to this, BENCHMARKS.md). A reservation now counts for at most the
connections still in the environment's channel.
"""
import os
import signal
import socket
import time

import pytest

from conftest import cgi_root, make_site, processor, site_vhost
from harness import Apache, free_port, paused_after, read_until_close, serving, stat_fields
from test_process_management import wait_until


@pytest.fixture
def shared(module, accounts):
    """env-a: two workers, a share of one (MaxClientShare 50); two multiplexers;
    ProcessorWaitTimeout 3 s."""
    port = free_port()
    apache = Apache("", name="client-share")
    a_site = make_site(apache.root, *accounts["peruser-a"], "a")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 2
MaxMultiplexers 2
MaxClientShare 50
ProcessorWaitTimeout 3
{cgi_root(apache.root)}{processor("env-a", "peruser-a", "MinProcessors 2", "MaxProcessors 2")}
{site_vhost(port, "a.test", a_site, "env-a")}
""")
    apache.port = port
    apache.start(ports=(port,))
    apache.wait_children(2 + 2)
    yield from serving(apache)


def get_a(port):
    """Status line of one `Connection: close` request to a.test, from 127.0.0.1."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        return read_until_close(sock).split(b"\r\n", 1)[0].decode()


def stopped(pid):
    return stat_fields(pid)[0] == "T"


def test_a_connection_a_worker_took_holds_no_share_while_its_multiplexer_is_late(shared):
    a, b = sorted(pid for pid, uid, _ in shared.children() if uid == 33)
    os.kill(b, signal.SIGSTOP)
    try:
        assert wait_until(lambda: stopped(b), timeout=5)
        # Held for 8 s right after it hands the first connection to env-a: its reservation
        # stays while a worker serves that connection and comes free again.
        with paused_after([a], "sendmsg", 8_000_000):
            started = time.monotonic()
            assert get_a(shared.port) == "HTTP/1.1 200 OK"
            os.kill(b, signal.SIGCONT)
            assert wait_until(lambda: not stopped(b), timeout=5)
            time.sleep(0.3)
            # Only b takes it. The client holds no worker and has nothing in the channel: it
            # is served at once. Counted with a's reservation, it waited all of
            # ProcessorWaitTimeout for its share and got 503.
            assert get_a(shared.port) == "HTTP/1.1 200 OK"
            assert time.monotonic() - started < 8, "the first multiplexer was let go before the test ended"
    finally:
        os.kill(b, signal.SIGCONT)
    assert get_a(shared.port) == "HTTP/1.1 200 OK"
    assert "for its client's share" not in shared.read_error_log()

"""A multiplexer's scheduling policy (MultiplexerPacing): SCHED_BATCH once it has held no
kept-alive connection for a second, so new connections are taken in batches without
preempting the workers; a normal process again as soon as it holds a kept-alive connection,
whose next request waits for it. Workers are normal processes."""
import socket
import time

import pytest

from conftest import make_site, site_vhost
from harness import Apache, free_port, response_on, serving, stat_fields
from test_end_to_end import get
from test_process_management import wait_until, workers_of

SCHED_OTHER, SCHED_BATCH = 0, 3


@pytest.fixture(scope="module")
def server(module, accounts):
    port = free_port()
    apache = Apache("", name="pacing")
    uid, gid = accounts["peruser-a"]
    site = make_site(apache.root, uid, gid, "a")
    # One multiplexer: every connection of the test passes through the one whose policy is read.
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 1
MaxMultiplexers 1
<Directory {apache.root}>
    Require all granted
</Directory>
<Processor a>
    User peruser-a
    Group peruser-a
    MinProcessors 1
</Processor>
{site_vhost(port, "a.test", site, "a")}
""")
    apache.port = port
    apache.ids = (uid, gid)
    apache.start(ports=(port,))
    yield from serving(apache, log_tail=3000)


def policy(pid):
    """The scheduling policy of process `pid` (field 41 of /proc/PID/stat)."""
    return int(stat_fields(pid)[38])


def the_multiplexer(server):
    """The one multiplexer (waited for: it runs as www-data once it has dropped root)."""
    found = wait_until(lambda: [pid for pid, uid, _ in server.children() if uid == 33], timeout=10)
    assert len(found) == 1, found
    return found[0]


def close_requests(server, seconds):
    """`Connection: close` requests, one every 50 ms for `seconds`."""
    end = time.time() + seconds
    while time.time() < end:
        status, body, _ = get(server.port, "a.test", "/index.html")
        assert status == 200, body
        time.sleep(0.05)


def kept_alive_request(conn):
    conn.sendall(b"GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n")
    status, _, body = response_on(conn)
    assert status == 200, body


def test_a_multiplexer_taking_only_new_connections_turns_batch(server):
    mux = the_multiplexer(server)
    assert policy(mux) == SCHED_OTHER  # as it starts
    close_requests(server, 2.0)
    assert policy(mux) == SCHED_BATCH
    workers = workers_of(server, server.ids)
    assert workers and all(policy(pid) == SCHED_OTHER for pid in workers), workers


def test_a_kept_alive_connection_makes_it_normal_until_a_second_after_it_closes(server):
    mux = the_multiplexer(server)
    close_requests(server, 1.5)
    assert policy(mux) == SCHED_BATCH
    conn = socket.create_connection(("127.0.0.1", server.port))
    try:
        kept_alive_request(conn)
        time.sleep(0.3)
        # The next request on the kept-alive connection: the multiplexer holds it, normal again.
        kept_alive_request(conn)
        assert wait_until(lambda: policy(mux) == SCHED_OTHER, timeout=3)
        # Still held, idle, for longer than the quiet second: it stays normal.
        time.sleep(1.5)
        kept_alive_request(conn)
        assert policy(mux) == SCHED_OTHER
    finally:
        conn.close()
    close_requests(server, 2.0)
    assert policy(mux) == SCHED_BATCH

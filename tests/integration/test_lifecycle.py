"""Children are replaced when they die, restarts serve again, and a stop leaves nothing behind."""
import os
import signal
import subprocess
import time

import pytest

from harness import Apache, free_port, serving, session_pids, stat_fields
from test_end_to_end import CGI, get, ids_of
from conftest import make_site, site_vhost


def session_states(sid):
    """pid -> state letter of every process in session `sid`."""
    out = {}
    for pid in session_pids(sid):
        try:
            out[pid] = stat_fields(pid)[0]
        except OSError:
            pass
    return out


@pytest.fixture
def small_server(module, accounts):
    port = free_port()
    apache = Apache("", name="life")
    uid, gid = accounts["peruser-a"]
    site = make_site(apache.root, uid, gid, "a")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 1
MinSpareProcessors 0
<Directory {apache.root}>
    Require all granted
</Directory>
<Processor only>
    User peruser-a
    Group peruser-a
    MinProcessors 1
</Processor>
{site_vhost(port, "only.test", site, "only")}
""")
    apache.port = port
    apache.ids = (uid, gid)
    apache.start(ports=(port,))
    apache.wait_children(2)
    yield from serving(apache)


def test_killed_worker_and_multiplexer_are_replaced_without_zombies(small_server):
    sid = os.getsid(small_server.pid())
    before = {pid: ids for pid, *ids in small_server.children()}
    worker = next(pid for pid, ids in before.items() if tuple(ids) == small_server.ids)
    mux = next(pid for pid, ids in before.items() if tuple(ids) == (33, 33))
    os.kill(worker, signal.SIGKILL)
    os.kill(mux, signal.SIGKILL)
    kids = None
    deadline = time.time() + 10
    while time.time() < deadline:
        kids = {pid: tuple(ids) for pid, *ids in small_server.children()}
        if len(kids) == 2 and worker not in kids and mux not in kids and all(u for u, _ in kids.values()):
            break
        time.sleep(0.05)
    assert sorted(kids.values()) == sorted([small_server.ids, (33, 33)]), kids
    assert "Z" not in session_states(sid).values()
    status, body, _ = get(small_server.port, "only.test", CGI)
    assert status == 200 and ids_of(body)[:2] == small_server.ids
    log = small_server.read_error_log()
    assert f"worker of only (pid {worker}" in log and "killed by signal 9" in log


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1])
def test_restart_serves_again_with_new_children(small_server, sig):
    old = {pid for pid, *_ in small_server.children()}
    parent = small_server.pid()
    os.kill(parent, sig)
    deadline = time.time() + 15
    while time.time() < deadline:
        kids = small_server.children()
        if len(kids) == 2 and not old & {p for p, *_ in kids} and all(u for _, u, _ in kids):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"children not replaced after restart: {small_server.children()}")
    assert small_server.pid() == parent
    status, body, _ = get(small_server.port, "only.test", CGI)
    assert status == 200 and ids_of(body)[:2] == small_server.ids
    assert "peruser: generation 1," in small_server.read_error_log()


def test_apache2ctl_stop_leaves_no_process(small_server):
    sid = os.getsid(small_server.pid())
    # The parent, 2 children, the images and the zygote they were forked from.
    assert len(session_states(sid)) == 3 + len(small_server.images()) + (1 if small_server.zygote() else 0)
    result = subprocess.run(["apache2ctl", "-f", small_server.config, "-k", "stop"],
                            capture_output=True, text=True, env=small_server.env(), timeout=30)
    assert result.returncode == 0, result.stderr
    deadline = time.time() + 10
    while time.time() < deadline and session_states(sid):
        time.sleep(0.05)
    assert session_states(sid) == {}, "processes of the server outlived its stop"
    assert not os.path.exists(small_server.pidfile)
    assert "caught SIGTERM, shutting down" in small_server.read_error_log()


def test_children_do_not_outlive_a_killed_parent(small_server):
    sid = os.getsid(small_server.pid())
    os.kill(small_server.pid(), signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and session_states(sid):
        time.sleep(0.05)
    assert session_states(sid) == {}, "children outlived their parent"

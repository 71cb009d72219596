"""Which worker takes a connection: the environment's oldest idle worker, warm from its last
request, not the one that slept longest; the others take one only while it is busy. Workers
sleep on the environment's channel through epolls of their own registered once with
EPOLLEXCLUSIVE, and the kernel wakes the first registered that sleeps."""
import os
import re
import threading
import time

import pytest

from conftest import make_site, php_config, site_vhost
from harness import Apache, free_port, serving
from test_end_to_end import get, ids_of
from test_process_management import wait_until, workers_of

CGI = "/cgi-bin/id.cgi"
PHP = "/pid.php"


def one_environment(accounts, name, processor):
    """a.test in one environment of peruser-a, whose <Processor> block says `processor`; its
    site has pid.php (PHP runs in the worker itself) and the CGIs of make_site."""
    port = free_port()
    apache = Apache("", name=name)
    uid, gid = accounts["peruser-a"]
    site = make_site(apache.root, uid, gid, "a")
    # PHP runs in the worker itself (a CGI is a child of it, which the worker reaps after the
    # response, with a wait of its own).
    with open(os.path.join(site, "pid.php"), "w") as f:
        f.write('<?php echo "worker=", getmypid(), "\\n";\n')
    os.chmod(os.path.join(site, "pid.php"), 0o644)
    apache.write_config(f"""
Listen 127.0.0.1:{port}
{php_config()}
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
<Processor pool>
    User peruser-a
    Group peruser-a
{processor}
</Processor>
{site_vhost(port, "a.test", site, "pool")}
""")
    apache.port = port
    apache.ids = (uid, gid)
    apache.start(ports=(port,))
    yield from serving(apache, log_tail=3000)


@pytest.fixture(scope="module")
def server(module, accounts):
    yield from one_environment(accounts, "worker-choice", "    MinProcessors 3")


def workers(server):
    return workers_of(server, server.ids)


def runs_a_child(pid):
    """Whether process `pid` has a child (for a worker: the CGI it runs)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return bool(f.read().split())
    except OSError:
        return False


def asleep_on_its_channel(pid):
    """Whether worker `pid` sleeps in epoll_wait: done with its last connection, ready to be
    the one the kernel wakes. (Its answer reaches the client before the worker has logged and
    cleaned up; under load that moment is long enough for the next connection to go to a
    spare.)"""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "epoll_wait" in f.read()
    except OSError:
        return False


def served_by(body):
    m = re.search(r"worker=(\d+)", body)
    assert m, body
    return int(m.group(1))


def fetch(server, path=PHP):
    status, body, _ = get(server.port, "a.test", path)
    assert status == 200, body
    if path.startswith(CGI):
        assert ids_of(body)[:2] == server.ids, body
    return served_by(body)


def test_one_after_another_the_same_worker_serves_the_connections(server):
    assert wait_until(lambda: len(workers(server)) >= 3), workers(server)
    served = []
    for _ in range(12):
        # A tenant with light traffic: its worker is back asleep before the next connection
        # (one that comes while the worker still finishes the last goes to another).
        if served:
            assert wait_until(lambda: asleep_on_its_channel(served[-1]), timeout=5)
        time.sleep(0.1)
        served.append(fetch(server))
    warm = max(set(served), key=served.count)
    # First in, first out, three workers would serve four each. A worker awake for a moment
    # (it looks at the closings it keeps) may leave one to a spare.
    assert served.count(warm) >= 10, f"connections went round the workers: {served}"
    assert len(workers(server)) >= 3, "the others slept through it, still there"


def test_while_that_worker_is_busy_another_takes_the_connection_then_it_is_back(server):
    assert wait_until(lambda: len(workers(server)) >= 3), workers(server)
    time.sleep(0.1)
    warm = fetch(server)
    assert wait_until(lambda: asleep_on_its_channel(warm), timeout=5)
    slow = {}
    thread = threading.Thread(target=lambda: slow.update(pid=fetch(server, CGI + "?sleep=2")))
    thread.start()
    assert wait_until(lambda: runs_a_child(warm), timeout=5), "the warm worker runs the slow CGI"
    other = fetch(server)
    assert other != warm, "a busy worker cannot take a connection: another does"
    thread.join()
    assert slow["pid"] == warm
    # Once it reaped its CGI and sleeps again, it takes the next connection again.
    assert wait_until(lambda: not runs_a_child(warm), timeout=5)
    assert wait_until(lambda: asleep_on_its_channel(warm), timeout=5)
    assert fetch(server) == warm, "once free, the first worker takes the next connection again"


# The system call a process sleeps in (/proc/PID/syscall's first field), by machine.
SYSCALLS = {"x86_64": {"recvmsg": 47, "epoll_wait": 232}, "aarch64": {"recvmsg": 212, "epoll_wait": 22}}


def sleeps_in(pid, call):
    """Whether process `pid` sleeps in system call `call` (epoll_pwait on machines without
    epoll_wait)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            number = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return number.isdigit() and int(number) == SYSCALLS[os.uname().machine][call]


@pytest.fixture(scope="module")
def lone(module, accounts):
    yield from one_environment(accounts, "worker-alone",
                               "    MinProcessors 1\n    MinSpareProcessors 0\n    MaxSpareProcessors 0")


@pytest.mark.skipif(os.uname().machine not in SYSCALLS, reason="system call numbers of this machine not listed")
def test_a_worker_with_no_other_ready_sleeps_in_recvmsg_itself(lone, server):
    """With no other worker of its environment ready, a worker waits for its next connection in
    recvmsg on the channel (one call per connection instead of epoll_wait and then recvmsg);
    with others ready, through the channel's epoll, which the kernel serves first (the tests
    above: the same warm worker takes one connection after another)."""
    assert wait_until(lambda: len(workers_of(lone, lone.ids)) >= 1), workers_of(lone, lone.ids)
    first = fetch(lone)
    assert wait_until(lambda: sleeps_in(first, "recvmsg"), timeout=5), \
        f"the lone worker waits in recvmsg ({open(f'/proc/{first}/syscall').read().split()[0]})"
    assert fetch(lone) == first, "and takes the next connection from there"
    # Three workers, all ready: the one that served sleeps in epoll_wait.
    assert wait_until(lambda: len(workers(server)) >= 3), workers(server)
    warm = fetch(server)
    assert wait_until(lambda: sleeps_in(warm, "epoll_wait"), timeout=5)

"""Process management in the real Apache: spares, on-demand workers, timeouts, recycling,
graceful restart under load, crashes under load, and a corrupted shared table."""
import os
import random
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import make_site, php_config, site_vhost
from harness import Apache, alive, free_port, read_maps, serving
from loadgen import run_load
from test_end_to_end import CGI, get, ids_of
from test_lifecycle import session_states

MUX = (33, 33)


def wait_until(predicate, timeout=15, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def workers_of(server, ids):
    return sorted(pid for pid, uid, gid in server.children() if (uid, gid) == ids)


def in_background(fn, *args):
    """Runs fn(*args) in a thread; result["value"] or result["error"] holds the outcome."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


@pytest.fixture
def managed(module, accounts, request):
    """Two environments: `spare` (MinProcessors 1, spares 2..3, max 6) as peruser-a and
    `lazy` (no minimum, no spares, max 3) as peruser-b; small timeouts."""
    extra = getattr(request, "param", "")
    port = free_port()
    apache = Apache("", name="pm")
    a, b = accounts["peruser-a"], accounts["peruser-b"]
    a_site = make_site(apache.root, *a, "a")
    b_site = make_site(apache.root, *b, "b")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 1
MaxMultiplexers 2
IdleTimeout 3
ExpireTimeout 4
{extra}
<Directory {apache.root}>
    Require all granted
</Directory>
<Processor spare>
    User peruser-a
    Group peruser-a
    MinProcessors 1
    MinSpareProcessors 2
    MaxSpareProcessors 3
    MaxProcessors 6
</Processor>
<Processor lazy>
    User peruser-b
    Group peruser-b
    MinProcessors 0
    MinSpareProcessors 0
    MaxProcessors 3
</Processor>
{site_vhost(port, "spare.test", a_site, "spare")}
{site_vhost(port, "lazy.test", b_site, "lazy")}
""")
    apache.port = port
    apache.a, apache.b = a, b
    apache.start(ports=(port,))
    yield from serving(apache)


def test_spares_converge_to_their_bounds(managed):
    # MinProcessors 1 and two idle spares: two workers, both idle.
    assert wait_until(lambda: len(workers_of(managed, managed.a)) == 2), workers_of(managed, managed.a)
    # Three requests held busy: two spares are kept idle beside them, so five workers.
    busy = [in_background(get, managed.port, "spare.test", CGI + "?sleep=3") for _ in range(3)]
    assert wait_until(lambda: len(workers_of(managed, managed.a)) == 5, timeout=8), workers_of(managed, managed.a)
    for thread, result in busy:
        thread.join()
        assert result["value"][0] == 200
    # Five idle is above MaxSpareProcessors 3: back to three at once. Then, with no request for
    # IdleTimeout (3 s), the environment is quiet: its spares go too, down to MinProcessors 1,
    # never below, and no spare is started for it again until it has work.
    assert wait_until(lambda: len(workers_of(managed, managed.a)) <= 3, timeout=3), workers_of(managed, managed.a)
    assert wait_until(lambda: len(workers_of(managed, managed.a)) == 1, timeout=12), workers_of(managed, managed.a)
    time.sleep(4)
    assert len(workers_of(managed, managed.a)) == 1
    # Work brings the spares back.
    assert get(managed.port, "spare.test", CGI)[0] == 200
    assert wait_until(lambda: len(workers_of(managed, managed.a)) >= 2, timeout=5), workers_of(managed, managed.a)


def test_environment_without_minimum_starts_workers_on_demand_and_idles_back_to_none(managed):
    assert workers_of(managed, managed.b) == []
    started = time.monotonic()
    status, body, _ = get(managed.port, "lazy.test", CGI)
    assert status == 200 and ids_of(body)[:2] == managed.b
    assert time.monotonic() - started < 2
    first = workers_of(managed, managed.b)
    assert len(first) == 1
    # A second request while the first worker is busy starts a second worker.
    slow = in_background(get, managed.port, "lazy.test", CGI + "?sleep=2")
    time.sleep(0.5)
    status, body, _ = get(managed.port, "lazy.test", CGI)
    assert status == 200
    assert wait_until(lambda: len(workers_of(managed, managed.b)) >= 2, timeout=3)
    slow[0].join()
    assert slow[1]["value"][0] == 200
    # IdleTimeout 3: with no minimum and no spares, the environment goes back to no worker.
    assert wait_until(lambda: workers_of(managed, managed.b) == [], timeout=12), workers_of(managed, managed.b)
    assert get(managed.port, "lazy.test", CGI)[0] == 200


def test_expire_timeout_stops_a_worker_stuck_on_one_request_and_logs_it(managed):
    stuck = in_background(get, managed.port, "spare.test", CGI + "?sleep=30")
    time.sleep(0.5)
    log_before = managed.read_error_log()
    assert wait_until(lambda: "ExpireTimeout 4 s" in managed.read_error_log(), timeout=10), managed.read_error_log()[-2000:]
    stuck[0].join(timeout=10)
    assert not stuck[0].is_alive()
    assert "value" not in stuck[1] or stuck[1]["value"][0] != 200
    line = [l for l in managed.read_error_log().splitlines() if "ExpireTimeout" in l][-1]
    assert "vhost spare.test" in line and 'request "GET /cgi-bin/id.cgi?sleep=30 HTTP/1.1"' in line, line
    assert get(managed.port, "spare.test", CGI)[0] == 200
    assert len(log_before) < len(managed.read_error_log())


@pytest.mark.parametrize("managed", ["MaxConnectionsPerChild 3"], indirect=True)
def test_max_connections_per_child_recycles_without_failing_a_request(managed):
    seen = []
    for _ in range(12):
        status, body, _ = get(managed.port, "lazy.test", CGI)
        assert status == 200
        seen.append(int(re.search(r"worker=(\d+)", body).group(1)))
    counts = {}
    for pid in seen:
        counts[pid] = counts.get(pid, 0) + 1
    assert len(counts) >= 4, seen
    assert max(counts.values()) <= 3, seen


@pytest.mark.parametrize("managed", ["MaxConnectionsPerChild 3\nBufferedLogs On"], indirect=True)
def test_a_recycled_worker_runs_its_child_cleanups_before_it_goes(managed):
    """A worker that reaches its count runs its own pool's cleanups before it exits, as httpd's
    children do: with BufferedLogs On, mod_log_config writes a worker's access-log lines only
    then, so none may be lost."""
    served = {}
    for n in range(12):
        status, body, _ = get(managed.port, "lazy.test", f"{CGI}?line={n}")
        assert status == 200
        served[n] = int(re.search(r"worker=(\d+)", body).group(1))
    # Each worker exits after its third connection; the last one may still be waiting for one.
    gone = wait_until(lambda: [pid for pid in set(served.values()) if not os.path.exists(f"/proc/{pid}")])
    assert len(gone) >= 3, served
    log = managed.read_access_log()
    missing = [n for n, pid in served.items() if pid in gone and f"?line={n} HTTP/1.1" not in log]
    assert not missing, (missing, served, log[-2000:])


@pytest.mark.parametrize("managed", ["MaxConnectionsPerChild 24\nIdleTimeout 600"], indirect=True)
def test_each_worker_recycles_at_its_own_count_within_max_connections_per_child(managed):
    """Workers started together share the load evenly; with one count for all they would all
    exit at once. Each gets its own, from three quarters of MaxConnectionsPerChild to all of it."""
    counts = {}
    for _ in range(24 * 8):
        status, body, _ = get(managed.port, "lazy.test", CGI)
        assert status == 200
        pid = int(re.search(r"worker=(\d+)", body).group(1))
        counts[pid] = counts.get(pid, 0) + 1
    assert max(counts.values()) <= 24, counts
    time.sleep(0.5)
    finished = [n for pid, n in counts.items() if not os.path.exists(f"/proc/{pid}")]
    assert len(finished) >= 5, counts
    assert all(18 <= n <= 24 for n in finished), counts
    assert len(set(finished)) >= 2, f"every worker recycled at the same count: {counts}"


@pytest.fixture
def growing(module, accounts):
    """One environment that only the queue can grow: one worker at start, no spares, up to 8."""
    port = free_port()
    apache = Apache("", name="grow")
    a = accounts["peruser-a"]
    site = make_site(apache.root, *a, "a")
    with open(os.path.join(site, "nap.php"), "w") as f:
        f.write('<?php usleep(2000); echo "rested\\n";\n')
    os.chmod(os.path.join(site, "nap.php"), 0o644)
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MaxConnectionsPerChild 0
{php_config()}
<Directory {apache.root}>
    Require all granted
</Directory>
<Processor busy>
    User peruser-a
    Group peruser-a
    MinProcessors 1
    MinSpareProcessors 0
    MaxSpareProcessors 0
    MaxProcessors 8
</Processor>
{site_vhost(port, "busy.test", site, "busy")}
""")
    apache.port = port
    apache.a = a
    apache.start(ports=(port,))
    yield from serving(apache)


def test_a_queue_that_moves_but_never_empties_grows_the_environment(growing):
    """32 clients asking for a page that takes 2 ms (little CPU), each as soon as the last
    answer came: the few workers take the queued connections one after another within a few
    ms, so the ones queued first are gone by the parent's next look, yet the multiplexers keep
    the queue filled. The environment grows to MaxProcessors (with no spares, nothing else
    would grow it)."""
    assert wait_until(lambda: len(workers_of(growing, growing.a)) == 1), workers_of(growing, growing.a)
    load = subprocess.Popen(["ab", "-q", "-t", "6", "-n", "1000000", "-c", "32", "-H", "Host: busy.test",
                             f"http://127.0.0.1:{growing.port}/nap.php"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    most = 0
    while load.poll() is None:
        most = max(most, len(workers_of(growing, growing.a)))
        time.sleep(0.05)
    report = load.stdout.read()
    assert load.returncode == 0, report
    assert re.search(r"Failed requests:\s+0\b", report) and "Non-2xx" not in report, report
    assert int(re.search(r"Complete requests:\s+(\d+)", report).group(1)) > 1000, report
    assert most == 8, f"the environment grew to {most} workers of 8 under a queue that never emptied"


def test_graceful_restart_under_load_loses_nothing(managed):
    expect = b"site a\n"
    restarts = []

    def progress(index):
        if index in (400, 1000, 1600):
            os.kill(managed.pid(), signal.SIGUSR1)
            restarts.append(index)

    ok, failures = run_load(managed.port, 2000, 16, "spare.test", expect=expect, on_progress=progress)
    assert failures == [], failures[:10]
    assert ok == 2000 and len(restarts) == 3
    assert "peruser: generation 3," in managed.read_error_log()
    # Old generations are gone: every child is of the current one.
    wait_until(lambda: len(managed.children()) <= 4, timeout=10)
    kids = managed.children()
    assert all(uid != 0 for _, uid, _ in kids)
    assert get(managed.port, "lazy.test", CGI)[0] == 200


def test_graceful_restart_applies_a_changed_configuration(managed):
    assert ids_of(get(managed.port, "lazy.test", CGI)[1])[:2] == managed.b
    with open(managed.config) as f:
        text = f.read()
    # lazy now runs as peruser-a, and a new vhost appears.
    text = text.replace("<Processor lazy>\n    User peruser-b\n    Group peruser-b",
                        "<Processor lazy>\n    User peruser-a\n    Group peruser-a")
    with open(managed.config, "w") as f:
        f.write(text)
    os.kill(managed.pid(), signal.SIGUSR1)
    assert wait_until(lambda: "peruser: generation 1," in managed.read_error_log())
    assert wait_until(lambda: ids_of(get(managed.port, "lazy.test", CGI)[1])[:2] == managed.a, timeout=10)
    assert wait_until(lambda: workers_of(managed, managed.b) == [], timeout=10), "old workers of lazy stayed"


# No worker leaves by itself at its MaxConnectionsPerChild: one exiting at the moment of a kill
# is logged as an ordinary exit, not as killed.
@pytest.mark.parametrize("managed", ["MaxConnectionsPerChild 0"], indirect=True)
def test_kill_minus_nine_under_load_only_loses_what_was_in_flight(managed):
    kills = []
    lock = threading.Lock()
    rng = random.Random(7)
    # Kill a worker of the loaded environment at these points of the load, and a multiplexer.
    plan = {300: managed.a, 700: managed.a, 1100: MUX, 1500: managed.a, 1900: managed.a}

    def progress(index):
        ids = plan.get(index)
        if ids is None:
            return
        with lock:
            # A worker may exit by itself between the listing and the kill (a spare retiring;
            # a static file needs one or two workers here): then another one is killed, or the
            # next to appear. An exited child not yet reaped (a zombie) would take the signal
            # without dying of it, so only running ones count.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                candidates = [pid for pid, uid, gid in managed.children()
                              if (uid, gid) == ids and alive(pid)]
                rng.shuffle(candidates)
                for pid in candidates:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    kills.append(pid)
                    return
                time.sleep(0.01)

    ok, failures = run_load(managed.port, 2400, 8, "spare.test", expect=b"site a\n", on_progress=progress)
    assert len(kills) == 5, kills
    # Each killed worker held at most one connection; a killed multiplexer only those it held.
    assert len(failures) <= len(kills) * 2, (len(kills), failures[:10])
    assert ok + len(failures) == 2400
    os.kill(managed.pid(), 0)
    assert get(managed.port, "spare.test", CGI)[0] == 200
    def unlogged(log):
        return [pid for pid in kills if f"(pid {pid}," not in log]

    def what_the_log_says():
        """For when this fails: the kills, and the log's lines about each one it does not name."""
        log = managed.read_error_log()
        missing = unlogged(log)
        return kills, [line for line in log.splitlines() if any(f"{pid}" in line for pid in missing)]
    assert wait_until(lambda: not unlogged(managed.read_error_log())), \
        ("every kill is logged with the pid", what_the_log_says())


def table_mapping(pid):
    # A few tries: the table may not be mapped yet.
    for _ in range(10):
        for line in read_maps(pid).splitlines():
            if "peruser-child-table" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                return start, end
        time.sleep(0.1)
    return None


def test_garbage_in_the_shared_table_cannot_make_the_parent_misbehave(managed):
    decoy = subprocess.Popen(["sleep", "60"])
    try:
        parent = managed.pid()
        # The parent maps the same shared table as every child; writing through its mapping
        # is writing what any child could write, and the parent outlives every round.
        start, end = table_mapping(parent)
        rng = random.Random(1)
        # Fill the table with garbage, and every 4-byte field with the decoy's pid, as a
        # compromised worker could; repeat while the parent keeps maintaining.
        for round_ in range(20):
            if round_ % 2:
                garbage = decoy.pid.to_bytes(4, "little") * ((end - start) // 4)
            else:
                garbage = rng.randbytes(end - start)
            with open(f"/proc/{parent}/mem", "r+b", buffering=0) as mem:
                mem.seek(start)
                mem.write(garbage)
            time.sleep(0.1)
        time.sleep(1)
        assert decoy.poll() is None, "the parent signalled a process that is not its child"
        os.kill(parent, 0)
        # No child runs as root, every child is the parent's, and both sites serve as their users.
        for pid, uid, gid in managed.children():
            assert uid != 0 and gid != 0
            assert (uid, gid) in (managed.a, managed.b, MUX)
        for host, ids in (("spare.test", managed.a), ("lazy.test", managed.b)):
            status, body, _ = get(managed.port, host, CGI)
            assert status == 200 and ids_of(body)[:2] == ids
        kids_after = {pid for pid, *_ in managed.children()}
        assert len(kids_after) <= 2 + 6 + 3, "more children than MaxMultiplexers + MaxProcessors allow"
        assert "Segmentation" not in managed.read_error_log()
    finally:
        decoy.kill()
        decoy.wait()


@pytest.mark.parametrize("managed", ["MaxClients 2\nServerLimit 8"], indirect=True)
def test_max_clients_caps_children_logs_once_and_keeps_the_reserved_processor(managed):
    # spare wants two idle workers and there is a multiplexer: 3 > MaxClients 2.
    assert wait_until(lambda: "MaxClients 2 (or ServerLimit 8) reached" in managed.read_error_log(), timeout=5)
    time.sleep(2)
    assert managed.read_error_log().count("MaxClients 2 (or ServerLimit 8) reached") == 1
    assert len(workers_of(managed, managed.a)) == 1
    # lazy has no worker, and the cap is reached: its reserved PROCESSOR slot still serves it.
    status, body, _ = get(managed.port, "lazy.test", CGI)
    assert status == 200 and ids_of(body)[:2] == managed.b


def test_graceful_stop_finishes_the_request_in_flight(managed):
    sid = os.getsid(managed.pid())
    slow = in_background(get, managed.port, "spare.test", CGI + "?sleep=2")
    time.sleep(0.5)
    os.kill(managed.pid(), signal.SIGWINCH)
    slow[0].join(timeout=15)
    assert slow[1].get("value", (None,))[0] == 200, slow[1]
    assert wait_until(lambda: session_states(sid) == {}, timeout=15), session_states(sid)
    assert "shutting down gracefully" in managed.read_error_log()


@pytest.mark.parametrize("managed", ["LoadModule status_module /usr/lib/apache2/modules/mod_status.so\n"
                                     "ExtendedStatus On\nServerLimit 16\n"
                                     "<Location /server-status>\n SetHandler server-status\n</Location>"],
                         indirect=True)
def test_mod_status_sees_true_mpm_values(managed):
    assert wait_until(lambda: len(workers_of(managed, managed.a)) == 2)
    status, body, _ = get(managed.port, "spare.test", "/server-status?auto")
    assert status == 200, body
    fields = dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)
    assert fields["ServerMPM"] == "peruser"
    assert len(fields["Scoreboard"]) == 16, "one scoreboard slot per ServerLimit"
    # The page is rendered from the scoreboard of spare's process image (ProcessorImage
    # isolated): spare's two workers occupy slots there; the one serving this page is busy.
    assert int(fields["BusyWorkers"]) >= 1
    assert int(fields["BusyWorkers"]) + int(fields["IdleWorkers"]) >= 2
    assert fields["Scoreboard"].count(".") < 16


def test_a_worker_reaped_before_its_image_answered_leaves_no_record(module, accounts):
    """A worker that dies before its process image's answer reaches the parent is reaped as an
    unknown child, and its exit is kept 5 s for the answer (UnclaimedExits). An image that
    answers later than that (starved; held here by strace before its send) names a pid that is
    no longer the parent's child. Recorded as alive, it would never end: the stop waited for it
    forever (seen once on a loaded box), MaxClients counted it, and a signal for it could reach
    whatever process the system gave that pid next. The parent drops it with an error line."""
    from harness import paused_after
    from test_tenant_holdings import image_role
    port = free_port()
    apache = Apache("", name="lost-child")
    site = make_site(apache.root, *accounts["peruser-a"], "a")
    apache.write_config(f"""Listen 127.0.0.1:{port}
MinSpareProcessors 0
MinMultiplexers 1
<Directory {apache.root}>
    Require all granted
</Directory>
<Processor env-a>
    User peruser-a
    Group peruser-a
</Processor>
{site_vhost(port, "a.test", site, "env-a")}
""")
    ids = accounts["peruser-a"]
    try:
        apache.start(ports=(port,))
        # The image starts with the first worker; that worker goes, the image stays.
        assert get(port, "a.test", "/index.html")[0] == 200
        for pid in workers_of(apache, ids):
            os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not workers_of(apache, ids))
        image = next(pid for pid in apache.images() if image_role(pid) == "0")
        with paused_after([image], "sendto", 8_000_000, moment="enter"):
            _, asked = in_background(get, port, "a.test", "/index.html")
            lost = wait_until(lambda: workers_of(apache, ids), timeout=10)
            assert lost, apache.read_error_log()[-2000:]
            os.kill(lost[0], signal.SIGKILL)
            line = f"(pid {lost[0]}, slot "
            assert wait_until(lambda: line in apache.read_error_log()
                              and "is no longer a child of this server" in apache.read_error_log(), timeout=20), \
                apache.read_error_log()[-3000:]
        assert wait_until(lambda: "value" in asked or "error" in asked, timeout=20)
        # The environment gets a worker again, and the stop does not wait for the lost one.
        status, body, _ = get(port, "a.test", CGI)
        assert status == 200 and ids_of(body)[0] == ids[0], body
        root = apache.pid()
        apache.stop(timeout=20)
        assert not alive(root)
    finally:
        try:
            apache.stop(timeout=20)
        except RuntimeError:
            os.kill(apache.pid(), signal.SIGKILL)  # the old build: it would wait forever
            raise
        finally:
            apache.cleanup()

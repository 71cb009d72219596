"""server-status: Peruser's child table, ?peruser_stats and ?auto, from a real mod_status."""
import html
import os
import pwd
import re
import signal
import time

import pytest

from harness import paused_after, serving
from test_availability import start_saturable
from test_end_to_end import CGI, get
from test_process_management import in_background, wait_until

USERS = {"single": "peruser-a", "other": "peruser-b", "Multiplexer": "www-data"}


@pytest.fixture
def status_server(module, accounts):
    apache = start_saturable(accounts, "status", extra="""
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
ExtendedStatus On
<Location /server-status>
    SetHandler server-status
</Location>""")
    yield from serving(apache)


def table_rows(page, heading, columns):
    """The data rows of the table under <h2>heading</h2>, as dicts keyed by `columns`."""
    section = page.split(f"<h2>{heading}</h2>", 1)[1].split("</table>", 1)[0]
    return [dict(zip(columns, (html.unescape(c) for c in tr.split("</td><td>"))))
            for tr in re.findall(r"<tr><td>(.*?)</td></tr>", section)]


def peruser_rows(page):
    return table_rows(page, "Peruser status", ["id", "pid", "status", "sb", "type", "processor", "pss", "avail"])


def stats_rows(page):
    return table_rows(page, "Peruser statistics",
                      ["name", "user", "group", "pss", "connections", "requests", "dropped", "avail", "reading"])


def auto_lines(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("PeruserEnvironment: "):
            name, *pairs = line.split(": ", 1)[1].split()
            out[name] = dict(p.split("=") for p in pairs)
    return out


def page(server, query=""):
    status, body, _ = get(server.port, "other.test", "/server-status" + query)
    assert status == 200, body
    return body


def test_child_table_matches_the_processes(status_server):
    rows = peruser_rows(page(status_server))
    # One row per child, plus one for the free general slots: together the 16 slots.
    slotted = [r for r in rows if r["id"] != "-"]
    free = [r for r in rows if r["id"] == "-"]
    assert len(free) == 1 and free[0]["type"] == "UNKNOWN" and free[0]["processor"].endswith(" free slots")
    assert len(slotted) + int(free[0]["processor"].split()[0]) == 16, rows
    live = {int(r["pid"]): r for r in rows if r["id"] != "-" and int(r["pid"]) > 0}
    kids = {pid: (uid, gid) for pid, uid, gid in status_server.children()}
    assert set(live) == set(kids), (sorted(live), sorted(kids))
    for pid, row in live.items():
        user = USERS[row["processor"]]
        assert kids[pid][0] == pwd.getpwnam(user).pw_uid, (pid, row)
        assert row["type"] in ("MULTIPLEXER", "PROCESSOR", "WORKER")
        assert row["status"] in ("STARTING", "READY", "ACTIVE")
    # The reserved slots are the environments' PROCESSORs; the rest shows their alive/idle/max.
    assert rows[0]["type"] == "PROCESSOR" and rows[0]["processor"] == "single"
    assert rows[1]["type"] == "PROCESSOR" and rows[1]["processor"] == "other"
    assert rows[1]["pss"].startswith("2/") and rows[1]["pss"].endswith("/10")
    assert rows[0]["pss"].endswith("/1")
    muxes = [r for r in rows if r["type"] == "MULTIPLEXER"]
    assert len(muxes) == 2 and all(r["pss"] == "2/2/2" and r["processor"] == "Multiplexer" for r in muxes)
    # The worker serving this very page is ACTIVE and busy writing.
    serving = [r for r in rows if r["processor"] == "other" and r["status"] == "ACTIVE"]
    assert serving and serving[0]["sb"].startswith("BUSY")
    assert free[0]["status"] == "STANDBY" and free[0]["sb"] == "DEAD"


def test_availability_counters_and_the_three_views(status_server):
    busy = in_background(get, status_server.port, "single.test", CGI + "?sleep=4")
    time.sleep(0.3)
    # The page is rendered by a worker of `other`: mod_status's own table shows its image's
    # scoreboard (other's workers only), and the Peruser table shows single's busy worker
    # without its vhost or request (issue 17).
    own = page(status_server)
    assert "GET /cgi-bin/id.cgi?sleep=4 HTTP/1.1" not in own and "single.test" not in own
    assert [r for r in peruser_rows(own) if r["processor"] == "single" and r["status"] == "ACTIVE"]
    assert get(status_server.port, "single.test", "/index.html")[0] == 503
    rows = peruser_rows(page(status_server))
    assert {r["avail"] for r in rows if r["processor"] == "single"} == {"90%"}
    assert {r["avail"] for r in rows if r["processor"] == "other"} == {"100%"}
    stats = stats_rows(page(status_server, "?peruser_stats"))
    assert [r["name"] for r in stats] == ["other", "single"], "ordered by most children alive"
    single = next(r for r in stats if r["name"] == "single")
    assert single["user"] == "peruser-a" and single["group"] == "peruser-a"
    assert single["dropped"] == "1" and single["avail"] == "90%" and single["pss"].endswith("/1")
    auto = auto_lines(page(status_server, "?auto"))
    assert auto["single"]["dropped"] == "1" and auto["single"]["availability"] == "90"
    assert auto["other"]["availability"] == "100" and int(auto["other"]["alive"]) == 2
    assert "ServerMPM: peruser" in page(status_server, "?auto")
    busy[0].join()
    # A connection that reaches a worker brings availability back to 100%.
    assert get(status_server.port, "single.test", "/index.html")[0] == 200
    auto = auto_lines(page(status_server, "?auto"))
    assert auto["single"]["availability"] == "100"
    assert int(auto["single"]["connections"]) >= 2 and int(auto["single"]["requests"]) >= 2


def test_counters_survive_a_graceful_restart_not_a_full_one(status_server):
    for _ in range(5):
        assert get(status_server.port, "single.test", "/index.html")[0] == 200
    before = int(auto_lines(page(status_server, "?auto"))["single"]["requests"])
    assert before >= 5
    os.kill(status_server.pid(), signal.SIGUSR1)
    assert wait_until(lambda: "peruser: generation 1," in status_server.read_error_log())
    time.sleep(1)
    after = int(auto_lines(page(status_server, "?auto"))["single"]["requests"])
    assert after >= before
    os.kill(status_server.pid(), signal.SIGHUP)
    assert wait_until(lambda: "peruser: generation 2," in status_server.read_error_log())
    time.sleep(1)
    assert int(auto_lines(page(status_server, "?auto"))["single"]["requests"]) == 0


@pytest.fixture
def fresh_server(module, accounts):
    """The status server plus environment `fresh` (peruser-a, no worker until asked), whose vhost
    serves the status page."""
    apache = start_saturable(accounts, "unrecorded", extra=lambda port: f"""
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
ExtendedStatus On
<Processor fresh>
    User peruser-a
    Group peruser-a
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName fresh.test
    DocumentRoot /usr/share/apache2
    ServerEnvironment fresh
    <Location /server-status>
        SetHandler server-status
    </Location>
</VirtualHost>""")
    yield from serving(apache, log_tail=3000)


def test_a_worker_the_parent_has_not_yet_recorded_is_alive(fresh_server):
    """The parent learns a new worker's pid from its image's answer and writes it to the table
    after that; the worker may be serving by then. strace holds that moment open (a pause after
    each recv of the parent's): the worker that renders this page is its environment's first,
    and the page counts it, with its own pid."""
    with paused_after([fresh_server.pid()], "recvfrom", 700000):
        status, body, _ = get(fresh_server.port, "fresh.test", "/server-status")
        assert status == 200, body
    rows = peruser_rows(body)
    quiet = [r["processor"] for r in rows if "with no worker: " in r["processor"]]
    assert not [q for q in quiet if "fresh" in q.split(": ", 1)[1].split(", ")], quiet
    fresh = [r for r in rows if r["processor"] == "fresh" and r["status"] == "ACTIVE"]
    assert len(fresh) == 1, rows
    assert int(fresh[0]["pid"]) in {pid for pid, _, _ in fresh_server.children()}

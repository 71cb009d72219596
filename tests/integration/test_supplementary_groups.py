"""A worker's supplementary groups are its user's as /etc/group says when the worker starts.
With isolated images the environment's image looks the list up and hands it to each new worker
instead of every worker calling initgroups (with ProcessorImage shared each worker still does);
either way a change to the group file is seen by the next worker forked after it."""
import grp
import subprocess

import pytest

from conftest import make_site, site_vhost
from harness import Apache, ensure_account, free_port, serving
from test_end_to_end import CGI, get, ids_of

USER = "peruser-g"
EXTRA = "peruser-gx"


@pytest.fixture(scope="module")
def extra_group():
    try:
        grp.getgrnam(EXTRA)
    except KeyError:
        subprocess.run(["groupadd", "--system", EXTRA], check=True)
    yield grp.getgrnam(EXTRA).gr_gid
    subprocess.run(["gpasswd", "--delete", USER, EXTRA], capture_output=True)


@pytest.fixture(scope="module", params=["isolated", "shared"])
def server(request, module, extra_group):
    uid, gid = ensure_account(USER)
    subprocess.run(["gpasswd", "--delete", USER, EXTRA], capture_output=True)  # not a member yet
    port = free_port()
    apache = Apache("", name=f"groups-{request.param}")
    site = make_site(apache.root, uid, gid, "g")
    # Every worker serves one connection and exits, with no spare: each request soon runs in a
    # worker forked after the last change.
    apache.write_config(f"""
Listen 127.0.0.1:{port}
ProcessorImage {request.param}
MaxConnectionsPerChild 1
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
<Processor env-g>
    User {USER}
    Group {USER}
    MinSpareProcessors 0
    MaxSpareProcessors 0
</Processor>
{site_vhost(port, "g.test", site, "env-g")}
""")
    apache.port, apache.gid = port, gid
    apache.start(ports=(port,))
    yield from serving(apache, log_tail=3000)


def groups_after_the_old_workers(server, requests=6):
    """The groups the last of `requests` requests ran with (a worker serves one and exits, so
    the last ones run in workers forked after whatever changed before)."""
    seen = None
    for _ in range(requests):
        status, body, _ = get(server.port, "g.test", CGI)
        assert status == 200, body
        seen = set(ids_of(body)[2])
    return seen


def test_a_worker_starts_with_its_users_groups_and_the_next_ones_follow_the_group_file(server, extra_group):
    assert groups_after_the_old_workers(server) == {server.gid}
    subprocess.run(["gpasswd", "--add", USER, EXTRA], check=True, capture_output=True)
    try:
        assert groups_after_the_old_workers(server) == {server.gid, extra_group}, \
            "a worker forked after the user joined a group has it"
    finally:
        subprocess.run(["gpasswd", "--delete", USER, EXTRA], check=True, capture_output=True)
    assert groups_after_the_old_workers(server) == {server.gid}, \
        "a worker forked after the user left the group no longer has it"

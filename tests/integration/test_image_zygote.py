"""Environments' images come from one zygote (Zygote.swift): an apache2 the root executes with a
configuration that names no tenant, which loads the modules, goes through Apache's first pass
and forks each image. The images then share the libraries' relocated pages (one physical copy)
where executed images each made their own; the zygote holds no tenant's secret; a zygote that
dies is started again for the next image, and one whose images all left exits. The price, and
the switch that declines it (ProcessorImageZygote Off): images forked from one zygote share its
address layout and the seed of its stack canary and pointer guard.
"""
import contextlib
import http.client
import os
import re
import signal
import struct
import threading
import time

from conftest import make_site, php_module, site_vhost
from harness import Apache, child_pids, free_port, read_maps
from test_end_to_end import get
from test_process_management import wait_until
from test_tenant_holdings import images_by_role, memory_hits

PAGE = os.sysconf("SC_PAGE_SIZE")


def configure(apache, port, accounts, extra=""):
    a_site = make_site(apache.root, *accounts["peruser-a"], "a")
    b_site = make_site(apache.root, *accounts["peruser-b"], "b")
    secrets = {"a": "zygote-test-secret-of-a-6f1c", "b": "zygote-test-secret-of-b-92d4"}
    vhosts = []
    for name, site, env in (("a.test", a_site, "env-a"), ("b.test", b_site, "env-b")):
        block = site_vhost(port, name, site, env)
        vhosts.append(block.replace("</VirtualHost>", f"    SetEnv TENANT_SECRET {secrets[name[0]]}\n</VirtualHost>"))
    apache.write_config(f"""
Listen 127.0.0.1:{port}
LoadModule php_module {php_module()}
MinSpareProcessors 0
MinMultiplexers 1
{extra}
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>
<Processor env-a>
    User peruser-a
    Group peruser-a
</Processor>
<Processor env-b>
    User peruser-b
    Group peruser-b
</Processor>
{chr(10).join(vhosts)}
""")
    for site in (a_site, b_site):
        with open(os.path.join(site, "id.php"), "w") as f:
            f.write("<?php echo 'uid=', posix_getuid(), ' ', getenv('TENANT_SECRET') ? 'has-secret' : '', \"\\n\";\n")
        os.chmod(os.path.join(site, "id.php"), 0o644)
    return secrets


@contextlib.contextmanager
def two_tenants(accounts, name, extra=""):
    """A started server of configure()'s two tenants: (apache, port, secrets, A's uid, B's uid)."""
    port = free_port()
    apache = Apache("", name=name)
    secrets = configure(apache, port, accounts, extra=extra)
    try:
        apache.start(ports=(port,))
        yield apache, port, secrets, accounts["peruser-a"][0], accounts["peruser-b"][0]
    finally:
        apache.stop()
        apache.cleanup()


def image_of(apache, role):
    from test_tenant_holdings import image_role
    found = [pid for pid in apache.images() if image_role(pid) == role]
    assert len(found) == 1, (role, images_by_role(apache))
    return found[0]


def relocated_pages(pid, library):
    """{(mapping's file offset + page offset): physical frame} of the copied-on-write pages of
    `library`'s mappings in `pid` (its relocations: what the dynamic loader wrote)."""
    pages = {}
    entries = []
    current = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                current = None
                if len(fields) > 5 and fields[5].endswith(library):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    current = [start, end, int(fields[2], 16), 0]
                    entries.append(current)
            elif current is not None and fields[0] == "Anonymous:":
                current[3] = int(fields[1])
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for start, end, offset, anonymous in entries:
            if not anonymous:
                continue
            for address in range(start, end, PAGE):
                entry = int.from_bytes(os.pread(pagemap.fileno(), 8, address // PAGE * 8), "little")
                if entry >> 63 and not entry >> 61 & 1:  # present, and not a page of the file itself
                    pages[offset + address - start] = entry & ((1 << 55) - 1)
    return pages


def startup_randomness(pid):
    """Where libc is mapped in `pid`, and the 16 bytes the kernel gave it at exec (AT_RANDOM),
    from which glibc derives the stack canary and the pointer guard."""
    auxv = open(f"/proc/{pid}/auxv", "rb").read()
    seed_at = dict(struct.iter_unpack("<QQ", auxv[:len(auxv) // 16 * 16]))[25]  # AT_RANDOM
    with open(f"/proc/{pid}/mem", "rb") as memory:
        memory.seek(seed_at)
        seed = memory.read(16)
    libc = min(int(line.split("-")[0], 16) for line in read_maps(pid).splitlines() if line.endswith("/libc.so.6"))
    return libc, seed


def test_images_come_from_one_zygote_and_share_its_relocated_libraries(module, accounts):
    with two_tenants(accounts, "zygote") as (apache, port, secrets, a_uid, b_uid):
        assert apache.zygote() is None, "no zygote before an environment needs an image"
        assert get(port, "a.test", "/id.php")[1] == f"uid={a_uid} has-secret\n"
        assert get(port, "b.test", "/id.php")[1] == f"uid={b_uid} has-secret\n"
        zygote = apache.zygote()
        assert zygote, "the zygote runs"
        # Each image says which it is in its environment block (/proc/PID/environ), as an
        # executed one does; the zygote is no image.
        assert images_by_role(apache) == ["0", "1", "m"]
        a_image, b_image = image_of(apache, "0"), image_of(apache, "1")
        php = os.path.basename(php_module())
        # The images share the frames of mod_php's relocated pages (the zygote's); executed
        # images each wrote their own copy.
        a_pages, b_pages = relocated_pages(a_image, php), relocated_pages(b_image, php)
        assert a_pages and b_pages, "mod_php's relocations are copied-on-write pages"
        shared = [offset for offset, frame in a_pages.items() if b_pages.get(offset) == frame]
        print(f"{len(shared)} of A's {len(a_pages)} relocated pages of mod_php are B's too ({len(b_pages)})")
        assert len(shared) >= len(a_pages) // 2, (len(shared), len(a_pages), len(b_pages))
        # The price (README): the same layout, canary and pointer guard in both tenants' images.
        assert startup_randomness(a_image) == startup_randomness(b_image) == startup_randomness(zygote)
        # The zygote holds no tenant's secret (the scan bites: A's image holds A's).
        needles = {tenant: secret.encode() for tenant, secret in secrets.items()}
        assert "a" in memory_hits(a_image, needles)
        assert memory_hits(zygote, needles) == {}, "the zygote holds a tenant's secret"
        assert "libphp" in read_maps(zygote)


def test_a_zygote_that_dies_comes_back_and_one_whose_images_left_exits(module, accounts):
    with two_tenants(accounts, "zygote-life", extra="IdleTimeout 2") as (apache, port, _, a_uid, b_uid):
        assert get(port, "a.test", "/id.php")[1] == f"uid={a_uid} has-secret\n"
        first = apache.zygote()
        assert first
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: "the image zygote (pid %d) exited (signal 9)" % first in apache.read_error_log(),
                          timeout=10, interval=0.1), apache.read_error_log()[-2000:]
        # A's image goes on without it; B's image comes from a new zygote.
        assert get(port, "a.test", "/id.php")[1] == f"uid={a_uid} has-secret\n"
        assert get(port, "b.test", "/id.php")[1] == f"uid={b_uid} has-secret\n"
        second = apache.zygote()
        assert second and second != first
        assert images_by_role(apache) == ["0", "1", "m"]
        # With no traffic both images leave (10 s after their last worker asked), then the zygote.
        assert wait_until(lambda: apache.zygote() is None, timeout=40, interval=0.5), apache.read_error_log()[-2000:]
        assert "the image zygote (pid %d) exits: no environment's image runs" % second in apache.read_error_log()
        assert not {"0", "1"} & set(images_by_role(apache))
        # And the next request brings it back.
        assert get(port, "a.test", "/id.php")[1] == f"uid={a_uid} has-secret\n"
        assert apache.zygote() not in (None, first, second)


def test_with_the_zygote_turned_off_each_image_is_executed_with_randomness_of_its_own(module, accounts):
    """ProcessorImageZygote Off: no zygote; each environment's image is an apache2 the root
    executes, with its own address layout and its own canary and pointer guard seed."""
    with two_tenants(accounts, "zygote-off", extra="ProcessorImageZygote Off") as (apache, port, _, a_uid, b_uid):
        assert get(port, "a.test", "/id.php")[1] == f"uid={a_uid} has-secret\n"
        assert get(port, "b.test", "/id.php")[1] == f"uid={b_uid} has-secret\n"
        assert images_by_role(apache) == ["0", "1", "m"]
        assert apache.zygote() is None, "a zygote runs though ProcessorImageZygote is Off"
        (a_libc, a_seed), (b_libc, b_seed) = (startup_randomness(image_of(apache, role)) for role in ("0", "1"))
        assert a_libc != b_libc and a_seed != b_seed
        assert "image zygote" not in apache.read_error_log()



def test_an_image_that_does_not_answer_holds_back_only_its_own_environment(module, accounts):
    """The parent asks an image for a worker and goes on (PendingStarts): while env-a's image
    is stopped (SIGSTOP; in life, its group lookup hanging on LDAP, say), env-b still gets the
    new worker it needs, and env-a's start waits in its slot. The old parent waited up to 1 s
    per ask, counted it failed, skipped the rest of the plan and asked again the next round:
    env-b got no worker until env-a's image moved, and the spawns queued in the image became
    workers nobody had on record. Once the image goes on, env-a's request is served, and every
    worker of env-a that runs is one the parent started."""
    with two_tenants(accounts, "image-stall", extra="LogLevel info mpm_peruser:debug") as (apache, port, _, a_uid, b_uid):
        for site_name in ("a", "b"):  # make_site's document roots
            path = os.path.join(apache.root, site_name, "slow.php")
            with open(path, "w") as f:
                f.write("<?php sleep(8); echo 'uid=', posix_getuid(), \"\\n\";\n")
            os.chmod(path, 0o644)
        for host, uid in (("a.test", a_uid), ("b.test", b_uid)):
            status, body, _ = get(port, host, "/id.php")
            assert status == 200 and f"uid={uid} " in body, body
        a_image = image_of(apache, "0")
        results = {}

        def ask(name, host, path, timeout):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request("GET", path, headers={"Host": host})
                response = conn.getresponse()
                results[name] = (response.status, response.read().decode(errors="replace"))
            except OSError as error:
                results[name] = (None, repr(error))

        threads = [threading.Thread(target=ask, args=(n, h, "/slow.php", 30)) for n, h in (("a1", "a.test"),
                                                                                          ("b1", "b.test"))]
        for thread in threads:
            thread.start()
        # Each environment's one worker is now busy for 8 s: a second request needs a new one.
        assert wait_until(lambda: sum(1 for _, uid, _ in apache.children() if uid in (a_uid, b_uid)) >= 2)
        time.sleep(0.5)
        os.kill(a_image, signal.SIGSTOP)
        try:
            a2 = threading.Thread(target=ask, args=("a2", "a.test", "/id.php", 30))
            a2.start()
            time.sleep(0.3)  # the parent asks env-a's image first
            ask("b2", "b.test", "/id.php", 4)
            assert results["b2"][0] == 200 and f"uid={b_uid} " in results["b2"][1], results["b2"]
            with open(f"/proc/{a_image}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "T", "env-a's image was stopped all along"
            assert "a2" not in results
            assert wait_until(lambda: "did not start a worker" in apache.read_error_log(), timeout=5)
        finally:
            os.kill(a_image, signal.SIGCONT)
        a2.join(30)
        assert results["a2"][0] == 200 and f"uid={a_uid} " in results["a2"][1], results["a2"]
        for thread in threads:
            thread.join(30)
        time.sleep(1)
        log = apache.read_error_log()
        started = {int(pid) for pid in re.findall(r"started worker of env-a \(pid (\d+)", log)}
        running = {pid for pid, uid, _ in apache.children() if uid == a_uid}
        assert running and running <= started, (running, started)
        assert "was not asked for" not in log


def blocked_signals(pid):
    """The signal numbers blocked in `pid` (SigBlk of /proc/PID/status)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigBlk:"):
            mask = int(line.split()[1], 16)
            return [n for n in range(1, 65) if mask >> (n - 1) & 1]
    raise AssertionError(f"no SigBlk for {pid}")


def test_a_worker_an_image_forks_is_the_roots_child_and_blocks_no_signal(module, accounts):
    """An image forks each worker through a go-between made with vfork
    (peruser_shim_fork_for_root), which blocks every signal while it runs on the image's memory.
    The worker gets the image's mask back (else SIGUSR1, SIGWINCH and SIGTERM would wait
    forever), so does the image, the worker is the root's own child, and the go-between is
    gone: the image has no child left, not even a zombie. Twice: the zygote forks images the
    same way."""
    with two_tenants(accounts, "fork-for-root") as (apache, port, _, a_uid, b_uid):
        for host, uid, role in (("a.test", a_uid, "0"), ("b.test", b_uid, "1")):
            assert get(port, host, "/id.php")[1] == f"uid={uid} has-secret\n"
            workers = [pid for pid, worker_uid, _ in apache.children() if worker_uid == uid]
            assert workers, f"no worker of {host} is the root's child"
            image = image_of(apache, role)
            for pid in workers + [image, apache.zygote()]:
                assert blocked_signals(pid) == [], (pid, blocked_signals(pid))
            for forker in (image, apache.zygote()):
                assert child_pids(forker) == [], f"{forker} still has children {child_pids(forker)}"
        # The signals work: a graceful restart retires the workers (SIGUSR1 through the root).
        old = {pid for pid, uid, _ in apache.children() if uid in (a_uid, b_uid)}
        os.kill(apache.pid(), signal.SIGUSR1)
        assert wait_until(lambda: not old & {pid for pid, _, _ in apache.children()}, timeout=15), \
            apache.read_error_log()[-2000:]

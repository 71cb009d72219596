/* mod_peruser_attack: a TEST-ONLY Apache module that plays a compromised worker.
 *
 * Never install this module. tests/integration/test_inprocess_attacker.py compiles it with
 * `apxs -c` into a test server's temporary ServerRoot and enables it, with
 * `SetHandler peruser-attack`, in tenant A's vhost only.
 *
 * A CGI starts clean after exec (close-on-exec everywhere); code that runs inside a worker
 * (a PHP exploit, mod_perl) holds every descriptor and mapping the worker holds. This handler is
 * that code: ?attack=NAME picks an attack, performed from inside the worker process as tenant A.
 * The report is text/plain, one JSON object per line, each line flushed as soon as it is known,
 * so that what was done before a crash still reaches the client:
 *   {"attack": ..., "uid": ..., "pid": ..., ...}            first line
 *   {"step": ..., "ok": true|false, "errno": ..., "detail": ...}
 *   {"done": true}                                            last line
 *
 * Attacks:
 *   table     the shared child table (and the multiplexers' state, if mapped): every writable
 *             page gets extreme values for several of the parent's 200 ms rounds; read-only
 *             pages: mprotect, /proc/self/mem, process_vm_writev, MADV_REMOVE, map_files;
 *             memfd descriptors reopened read-write through /proc/self/fd.
 *   (sockets and forge take &fd=N[,M] to attack only those descriptors.)
 *   sockets   every socket but this request's client connection: SO_SNDBUF/SO_RCVBUF to the
 *             minimum, a flood of garbage (MSG_DONTWAIT), shutdown(SHUT_RDWR), a send after it.
 *   forge     every Unix socket: forged hand-back messages (HandoffMessage.swift's "PRU5" header
 *             and garbage) carrying a fresh TCP connection to this server, a listening socket, a
 *             socketpair end, /dev/null, this client connection, no fd, two fds; then ~2 s of
 *             as many as the channels take.
 *   empty     every Unix socket: 20 zero-length messages (which read like a peer's EOF).
 *   keepfd    dup this client connection to a high descriptor and keep it (the worker may hand
 *             the connection back to the multiplexers later).
 *   readkept  MSG_PEEK|MSG_DONTWAIT on the kept descriptor: what of the connection's later
 *             traffic (another vhost's requests) this worker can still see.
 *   cells     &seconds=N (default 4): every lend cell of this worker's environment page (the
 *             lowest writable page of the child table; ChildTable.swift's lendCellsOffset)
 *             holds a lend number, "answered", rewritten every millisecond: cell i says the
 *             connection lent as hand-off 1 + i with cell i came back, as if this worker had
 *             given back the first connections lent to any environment.
 *   cellszero &seconds=N (default 10): a helper process writes 0 over the kept-alive count
 *             beside every lend cell of that page, so each lent connection this environment
 *             answers reads as never kept alive before (MaxKeepAliveRequests).
 *   keepalives  with &fd= the hand-back channel: this client connection handed back with its
 *             true ticket, a request for b.test and a kept-alive count of &count=N (default
 *             2^32 - 1); writes nothing to the client (reported in the error log).
 *   signal    SIGKILL to getppid() and to every pid in the child table's identities (never 0,
 *             1, a negative pid, or this worker itself).
 *   holdings  what this worker holds of anyone: &needles=HEX[,HEX...] are searched for in every
 *             readable mapping of the process (through /proc/self/mem, so nothing faults);
 *             reports each needle's hits with the mapping they are in, then every descriptor
 *             (readlink of /proc/self/fd) and every shared writable mapping (/proc/self/maps).
 *   requests  not an attack, a probe: how many request_recs httpd made in this worker for client
 *             connections (create_request), and how many of them got a request head
 *             (post_read_request), this report's own request included.
 * Only libc and the APR/httpd API. */

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_log.h"
#include "util_script.h"
#include "apr_strings.h"
#include "apr_portable.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

module AP_MODULE_DECLARE_DATA peruser_attack_module;

/* The hand-off message (Sources/PeruserCore/Routing/HandoffMessage.swift): "PRU5", hops (u16 LE),
 * flags and reserved (u16, zero), length of the consumed bytes (u32 LE), a hand-back ticket (u64; a
 * forger cannot compute one: zero here), the client (16 bytes), the lend number (u64, zero from a
 * worker), the kept-alive responses so far (u32), the consumed bytes. */
#define MSG_HEADER 48
#define MSG_LARGEST_CONSUMED (96 * 1024)

/* Survives across requests in this worker process (keepfd / readkept). */
static int kept_fd = -1;
static char kept_peer[128];

/* ------------------------------------------------------------------ */
/* Reporting                                                            */
/* ------------------------------------------------------------------ */

static const char *errname(int e)
{
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOSPC: return "ENOSPC";
    case EPIPE: return "EPIPE";
    case ENOTSOCK: return "ENOTSOCK";
    case EMSGSIZE: return "EMSGSIZE";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EADDRINUSE: return "EADDRINUSE";
    case ENOBUFS: return "ENOBUFS";
    case EISCONN: return "EISCONN";
    case ENOTCONN: return "ENOTCONN";
    case ETOOMANYREFS: return "ETOOMANYREFS";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case EINPROGRESS: return "EINPROGRESS";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    default: return "E?";
    }
}

/* A JSON string literal of n bytes (anything but printable ASCII escaped). */
static const char *js_n(apr_pool_t *p, const char *s, size_t n)
{
    char *out, *o;
    size_t i;
    if (!s) {
        return "null";
    }
    out = o = apr_palloc(p, n * 6 + 3);
    *o++ = '"';
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        }
        else if (ch >= 0x20 && ch < 0x7f) {
            *o++ = (char)ch;
        }
        else {
            o += sprintf(o, "\\u%04x", ch);
        }
    }
    *o++ = '"';
    *o = 0;
    return out;
}

static const char *js(apr_pool_t *p, const char *s)
{
    return s ? js_n(p, s, strlen(s)) : "null";
}

/* Writes one report line and flushes it to the client at once. */
static void line(request_rec *r, const char *json)
{
    ap_rputs(json, r);
    ap_rputs("\n", r);
    ap_rflush(r);
}

/* One attempt: ok (the kernel allowed it), the errno if not, and what happened. */
static void step(request_rec *r, const char *what, int ok, int err, const char *fmt, ...)
{
    va_list ap;
    const char *detail = "";
    if (fmt) {
        va_start(ap, fmt);
        detail = apr_pvsprintf(r->pool, fmt, ap);
        va_end(ap);
    }
    line(r, apr_psprintf(r->pool, "{\"step\": %s, \"ok\": %s, \"errno\": %s, \"detail\": %s}",
                         js(r->pool, what), ok ? "true" : "false",
                         js(r->pool, ok ? "" : errname(err)), js(r->pool, detail)));
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    poll(NULL, 0, ms);
}

static int client_fd_of(request_rec *r)
{
    apr_socket_t *sock = ap_get_conn_socket(r->connection);
    apr_os_sock_t fd = -1;
    if (!sock || apr_os_sock_get(&fd, sock) != APR_SUCCESS) {
        return -1;
    }
    return fd;
}

static const char *describe_fd(apr_pool_t *p, int fd)
{
    char path[64], link[256];
    ssize_t n;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    n = readlink(path, link, sizeof link - 1);
    if (n < 0) {
        return "?";
    }
    link[n] = 0;
    return apr_pstrdup(p, link);
}

static const char *addr_text(apr_pool_t *p, const struct sockaddr_storage *ss, socklen_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (len == 0) {
        return "(none)";
    }
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)ss;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        return apr_psprintf(p, "%s:%u", ip, ntohs(in->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        return apr_psprintf(p, "[%s]:%u", ip, ntohs(in6->sin6_port));
    }
    if (ss->ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const void *)ss;
        if (len <= sizeof(sa_family_t)) {
            return "unix:(unnamed)";
        }
        return apr_psprintf(p, "unix:%s", un->sun_path[0] ? un->sun_path : "@abstract");
    }
    return apr_psprintf(p, "family %d", ss->ss_family);
}

/* ?fd=N[,M...] restricts the socket attacks to those descriptors (the test names the shared
 * hand-back socket or the environment's own channel); without it, every socket is attacked. */
static const char *only_fds;

static int wanted(int fd)
{
    const char *p = only_fds;
    if (!p || !*p) {
        return 1;
    }
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            return 0;
        }
        if (v == fd) {
            return 1;
        }
        p = *end ? end + 1 : end;
    }
    return 0;
}

/* Socket descriptors of this process, the client connection excluded. */
static int list_sockets(request_rec *r, int client_fd, int *out, int max)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int count = 0, self = d ? dirfd(d) : -1;
    if (!d) {
        step(r, "list /proc/self/fd", 0, errno, NULL);
        return 0;
    }
    while ((e = readdir(d)) && count < max) {
        struct stat st;
        int fd;
        if (!isdigit((unsigned char)e->d_name[0])) {
            continue;
        }
        fd = atoi(e->d_name);
        if (fd == self || fd == client_fd || !wanted(fd) || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
            continue;
        }
        out[count++] = fd;
    }
    closedir(d);
    return count;
}

static const char *socket_text(apr_pool_t *p, int fd, int *domain_out, int *type_out)
{
    int domain = -1, type = -1, listening = 0;
    socklen_t l = sizeof domain;
    struct sockaddr_storage local, peer;
    socklen_t local_len = sizeof local, peer_len = sizeof peer;
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l);
    l = sizeof type;
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l);
    l = sizeof listening;
    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l);
    if (getsockname(fd, (struct sockaddr *)&local, &local_len) != 0) {
        local_len = 0;
    }
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) != 0) {
        peer_len = 0;
    }
    if (domain_out) {
        *domain_out = domain;
    }
    if (type_out) {
        *type_out = type;
    }
    return apr_psprintf(p, "fd %d %s domain=%s type=%s listening=%d local=%s peer=%s", fd,
                        describe_fd(p, fd),
                        domain == AF_UNIX ? "AF_UNIX" : domain == AF_INET ? "AF_INET"
                        : domain == AF_INET6 ? "AF_INET6" : "other",
                        type == SOCK_SEQPACKET ? "SEQPACKET" : type == SOCK_STREAM ? "STREAM"
                        : type == SOCK_DGRAM ? "DGRAM" : "other",
                        listening, addr_text(p, &local, local_len), addr_text(p, &peer, peer_len));
}

/* ------------------------------------------------------------------ */
/* table                                                                */
/* ------------------------------------------------------------------ */

typedef struct {
    uintptr_t start, end;
    char perms[8];
    char name[160];
} mapping;

static int shared_state_mappings(mapping *out, int max)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char buf[1024];
    int count = 0;
    if (!f) {
        return -1;
    }
    while (fgets(buf, sizeof buf, f) && count < max) {
        unsigned long start, end;
        char perms[8], name[512] = "";
        if (!strstr(buf, "peruser-child-table") && !strstr(buf, "peruser-multiplexer-state")) {
            continue;
        }
        if (sscanf(buf, "%lx-%lx %7s %*s %*s %*s %511[^\n]", &start, &end, perms, name) < 3) {
            continue;
        }
        out[count].start = start;
        out[count].end = end;
        apr_cpystrn(out[count].perms, perms, sizeof out[count].perms);
        apr_cpystrn(out[count].name, name, sizeof out[count].name);
        count++;
    }
    fclose(f);
    return count;
}

enum { P_FF, P_ZERO, P_BYTES80, P_BYTES7F, P_I64MIN, P_I64MAX, P_I64MIN_STATUS_UNKNOWN,
       P_ACTIVE_SINCE_MIN, P_READY_SINCE_MIN, P_ACTIVE_SINCE_MAX, P_RANDOM, P_COUNT };

static const char *pattern_names[P_COUNT] = {
    "0xFF bytes", "zero bytes", "0x80 00 00 00 00 00 00 00 repeated", "0x7f ff ff ff ff ff ff ff repeated",
    "every 8-byte word Int64.min", "every 8-byte word Int64.max",
    "every word Int64.min, first byte of the page 0xFF (unknown status)",
    "status byte 3 (active), every other word Int64.min",
    "status byte 2 (ready), every other word Int64.min",
    "status byte 3 (active), every other word Int64.max",
    "random bytes",
};

static uint64_t rng_state;

static uint64_t next_random(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Fills a writable range; status byte offsets follow ChildTable.swift (a slot's page starts with
 * its status byte; its statusSince is the second word). */
static void fill(unsigned char *base, size_t len, int pattern)
{
    size_t i;
    for (i = 0; i + 8 <= len; i += 8) {
        uint64_t w;
        unsigned char b[8];
        switch (pattern) {
        case P_FF: w = UINT64_MAX; break;
        case P_ZERO: w = 0; break;
        case P_BYTES80: memset(b, 0, 8); b[0] = 0x80; memcpy(&w, b, 8); break;
        case P_BYTES7F: memset(b, 0xff, 8); b[0] = 0x7f; memcpy(&w, b, 8); break;
        case P_I64MAX: case P_ACTIVE_SINCE_MAX: w = (uint64_t)INT64_MAX; break;
        case P_RANDOM: w = next_random(); break;
        default: w = (uint64_t)INT64_MIN; break;
        }
        memcpy(base + i, &w, 8);
    }
    for (i = 0; i < len; i += 4096) {
        switch (pattern) {
        case P_I64MIN_STATUS_UNKNOWN: base[i] = 0xff; break;
        case P_ACTIVE_SINCE_MIN: case P_ACTIVE_SINCE_MAX: memset(base + i, 0, 8); base[i] = 3; break;
        case P_READY_SINCE_MIN: memset(base + i, 0, 8); base[i] = 2; break;
        default: break;
        }
    }
}

static void attack_table(request_rec *r)
{
    mapping maps[64];
    int count = shared_state_mappings(maps, 64), i, pattern, found_memfd = 0;
    DIR *d;
    struct dirent *e;

    if (count < 0) {
        step(r, "read /proc/self/maps", 0, errno, NULL);
        return;
    }
    for (i = 0; i < count; i++) {
        line(r, apr_psprintf(r->pool, "{\"mapping\": %s, \"start\": \"%lx\", \"size\": %lu, \"perms\": %s}",
                             js(r->pool, maps[i].name), (unsigned long)maps[i].start,
                             (unsigned long)(maps[i].end - maps[i].start), js(r->pool, maps[i].perms)));
    }
    if (count == 0) {
        step(r, "find the child table in /proc/self/maps", 0, ENOENT, "no peruser mapping at all");
    }

    /* memfd descriptors, reopened read-write through /proc/self/fd. */
    d = opendir("/proc/self/fd");
    while (d && (e = readdir(d))) {
        char path[64];
        const char *target;
        int fd, rw;
        if (!isdigit((unsigned char)e->d_name[0])) {
            continue;
        }
        fd = atoi(e->d_name);
        target = describe_fd(r->pool, fd);
        if (strncmp(target, "/memfd:", 7) != 0 && !strstr(target, "/dev/shm")) {
            continue;
        }
        found_memfd = 1;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        rw = open(path, O_RDWR | O_CLOEXEC);
        step(r, apr_psprintf(r->pool, "open %s (%s) read-write", path, target), rw >= 0, errno,
             rw >= 0 ? "SUCCEEDED: a writable descriptor of the shared mapping" : "refused");
        if (rw >= 0) {
            close(rw);
        }
    }
    if (d) {
        closedir(d);
    }
    if (!found_memfd) {
        step(r, "find a memfd or /dev/shm descriptor to reopen read-write", 0, ENOENT,
             "this worker holds no memfd descriptor");
    }

    /* Read-only pages: every way to write them anyway. */
    for (i = 0; i < count; i++) {
        unsigned char *base = (unsigned char *)maps[i].start;
        size_t len = maps[i].end - maps[i].start;
        char path[96];
        int fd, rc;
        if (strchr(maps[i].perms, 'w')) {
            continue;
        }
        rc = mprotect(base, len, PROT_READ | PROT_WRITE);
        if (rc == 0) {
            fill(base, len, P_I64MIN_STATUS_UNKNOWN);
            mprotect(base, len, PROT_READ);
        }
        step(r, apr_psprintf(r->pool, "mprotect read-only %s at %lx (%lu bytes) PROT_WRITE, then write",
                             maps[i].name, (unsigned long)maps[i].start, (unsigned long)len),
             rc == 0, errno, rc == 0 ? "SUCCEEDED: wrote Int64.min over read-only shared pages" : "refused");

        fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            step(r, "open /proc/self/mem read-write", 0, errno, NULL);
        }
        else {
            unsigned char *junk = apr_palloc(r->pool, len);
            ssize_t n;
            memset(junk, 0xff, len);
            n = pwrite(fd, junk, len, (off_t)maps[i].start);
            step(r, apr_psprintf(r->pool, "pwrite /proc/self/mem over read-only %s at %lx",
                                 maps[i].name, (unsigned long)maps[i].start),
                 n > 0, errno, n > 0 ? apr_psprintf(r->pool, "SUCCEEDED: wrote %ld bytes", (long)n) : "refused");
            close(fd);
        }
        {
            unsigned char *junk = apr_palloc(r->pool, len);
            struct iovec local = { junk, len }, remote = { base, len };
            ssize_t n;
            memset(junk, 0xff, len);
            n = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
            step(r, apr_psprintf(r->pool, "process_vm_writev into read-only %s at %lx",
                                 maps[i].name, (unsigned long)maps[i].start),
                 n > 0, errno, n > 0 ? apr_psprintf(r->pool, "SUCCEEDED: wrote %ld bytes", (long)n) : "refused");
        }
        rc = madvise(base, len, MADV_REMOVE);
        step(r, apr_psprintf(r->pool, "madvise MADV_REMOVE (punch out the shared pages) of read-only %s at %lx",
                             maps[i].name, (unsigned long)maps[i].start),
             rc == 0, errno, rc == 0 ? "SUCCEEDED: removed the shared pages" : "refused");
        snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)maps[i].start,
                 (unsigned long)maps[i].end);
        fd = open(path, O_RDWR | O_CLOEXEC);
        step(r, apr_psprintf(r->pool, "open %s read-write", path), fd >= 0, errno,
             fd >= 0 ? "SUCCEEDED" : "refused");
        if (fd >= 0) {
            close(fd);
        }
    }

    /* Writable pages (this worker's slot page and its environment's page, by design): extreme
     * values, each held for several of the parent's 200 ms maintenance rounds. */
    rng_state = (uint64_t)now_ms() * 6364136223846793005ULL + (uint64_t)getpid();
    for (pattern = 0; pattern < P_COUNT; pattern++) {
        long long until = now_ms() + 450;
        size_t total = 0;
        int ranges = 0;
        for (i = 0; i < count; i++) {
            if (strchr(maps[i].perms, 'w')) {
                ranges++;
                total += maps[i].end - maps[i].start;
            }
        }
        /* Reported before the writes: if the parent dies of them, this worker dies with it. */
        step(r, apr_psprintf(r->pool, "hold %s in %d writable range(s), %lu bytes, for 450 ms",
                             pattern_names[pattern], ranges, (unsigned long)total), 1, 0, NULL);
        while (now_ms() < until) {
            for (i = 0; i < count; i++) {
                if (strchr(maps[i].perms, 'w')) {
                    fill((unsigned char *)maps[i].start, maps[i].end - maps[i].start, pattern);
                }
            }
            sleep_ms(20);
        }
    }
}

/* ------------------------------------------------------------------ */
/* lend cells                                                           */
/* ------------------------------------------------------------------ */

/* The highest (`highest`) or lowest writable page of this worker's child-table mappings (0:
 * none): its detail page, or its environment page (the table's environment pages come before
 * its worker and detail pages). */
static uintptr_t writable_table_page(int highest)
{
    mapping maps[64];
    int count = shared_state_mappings(maps, 64), i;
    uintptr_t page = 0;
    for (i = 0; i < count; i++) {
        uintptr_t here = highest ? maps[i].end - 4096 : maps[i].start;
        if (strchr(maps[i].perms, 'w') && strstr(maps[i].name, "peruser-child-table")
            && (page == 0 || (highest ? here > page : here < page))) {
            page = here;
        }
    }
    return page;
}

static uintptr_t own_detail_page(void) { return writable_table_page(1); }
static uintptr_t own_environment_page(void) { return writable_table_page(0); }

/* ChildTable.swift: an environment page holds its lend cells from 64 on, 16 bytes each: the
 * lend number (the hand-off count below bit 48, the cell above, the kind in the top two bits:
 * 0 answered, 2 ended) and beside it the UInt32 count of kept-alive answers. */
#define CELLS_OFFSET 64
#define CELL_SIZE 16
#define CELL_COUNT ((4096 - CELLS_OFFSET) / CELL_SIZE)

static void attack_cells(request_rec *r, int seconds)
{
    int i;
    uintptr_t page = own_environment_page();
    long long until;
    uint64_t written = 0;
    if (!page) {
        step(r, "find this worker's environment page (a writable page of the child table)", 0, ENOENT, NULL);
        return;
    }
    until = now_ms() + 1000LL * seconds;
    while (now_ms() < until) {
        for (i = 0; i < CELL_COUNT; i++) {
            volatile uint64_t *cell = (volatile uint64_t *)(page + CELLS_OFFSET + CELL_SIZE * i);
            *cell = (uint64_t)i << 48 | (uint64_t)(1 + i);
            written++;
        }
        sleep_ms(1);
    }
    /* The page's connections-received counter (offset 8), which says it is the environment's
     * page: a detail page has 0 there, a worker page a time in milliseconds. */
    step(r, apr_psprintf(r->pool, "wrote lend numbers (answered) into the %d lend cells at %lx, %lu words in %d s; "
                         "received=%" APR_UINT64_T_FMT, CELL_COUNT, (unsigned long)page + CELLS_OFFSET,
                         (unsigned long)written, seconds, (apr_uint64_t)*(volatile uint64_t *)(page + 8)),
         1, 0, NULL);
}

/* Leaves a helper process (this tenant's uid, this worker's mappings) that writes 0 over every
 * kept-alive count beside this environment's lend cells for `seconds`: each lent connection
 * this environment answers then reads as never kept alive before. Double-forked, so nobody
 * has to reap it. */
static void attack_cellszero(request_rec *r, int seconds)
{
    int i, status;
    uintptr_t page = own_environment_page();
    pid_t child;
    if (!page) {
        step(r, "find this worker's environment page (a writable page of the child table)", 0, ENOENT, NULL);
        return;
    }
    child = fork();
    if (child == 0) {
        if (fork() == 0) {
            long long until = now_ms() + 1000LL * seconds;
            while (now_ms() < until) {
                for (i = 0; i < CELL_COUNT; i++) {
                    *(volatile uint32_t *)(page + CELLS_OFFSET + CELL_SIZE * i + 8) = 0;
                }
                usleep(20);
            }
        }
        _exit(0);
    }
    if (child > 0) {
        waitpid(child, &status, 0);
    }
    step(r, apr_psprintf(r->pool, "left a helper writing 0 over the lend cells' kept-alive counts at %lx for %d s",
                         (unsigned long)page + CELLS_OFFSET, seconds),
         child > 0, child > 0 ? 0 : errno, NULL);
}

/* ------------------------------------------------------------------ */
/* sockets                                                              */
/* ------------------------------------------------------------------ */

static void attack_sockets(request_rec *r, int client_fd)
{
    int fds[256], count = list_sockets(r, client_fd, fds, 256), i;
    char garbage[256];
    for (i = 0; i < (int)sizeof garbage; i++) {
        garbage[i] = (char)(i * 131 + 7);
    }
    step(r, apr_psprintf(r->pool, "found %d socket(s) besides the client connection (fd %d)", count, client_fd),
         1, 0, NULL);
    for (i = 0; i < count; i++) {
        int fd = fds[i], one = 1, value = 0, rc, j, sent = 0, again = 0, other = 0, first_err = 0;
        socklen_t l = sizeof value;
        const char *what = socket_text(r->pool, fd, NULL, NULL);
        long long started;

        rc = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &one, sizeof one);
        getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &value, &l);
        step(r, apr_psprintf(r->pool, "SO_SNDBUF=1 on %s", what), rc == 0, errno, "now %d", value);
        rc = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &one, sizeof one);
        l = sizeof value;
        getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, &l);
        step(r, apr_psprintf(r->pool, "SO_RCVBUF=1 on %s", what), rc == 0, errno, "now %d", value);

        started = now_ms();
        for (j = 0; j < 5000; j++) {
            ssize_t n = send(fd, garbage, 64 + (j % 190), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n >= 0) {
                sent++;
            }
            else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                again++;
            }
            else {
                other++;
                if (!first_err) {
                    first_err = errno;
                }
            }
        }
        step(r, apr_psprintf(r->pool, "flood 5000 garbage messages on %s", what), sent > 0, first_err ? first_err : EAGAIN,
             "sent=%d eagain=%d other_errors=%d first_error=%s in %ld ms", sent, again, other,
             errname(first_err), (long)(now_ms() - started));

        rc = shutdown(fd, SHUT_RDWR);
        step(r, apr_psprintf(r->pool, "shutdown(SHUT_RDWR) %s", what), rc == 0, errno, NULL);
        {
            ssize_t n = send(fd, garbage, 32, MSG_DONTWAIT | MSG_NOSIGNAL);
            step(r, apr_psprintf(r->pool, "send after shutdown on fd %d", fd), n >= 0, errno, NULL);
        }
    }
}

/* ------------------------------------------------------------------ */
/* forge                                                                */
/* ------------------------------------------------------------------ */

static size_t header(unsigned char *out, unsigned hops, unsigned reserved, uint32_t declared)
{
    memset(out, 0, MSG_HEADER);
    memcpy(out, "PRU5", 4);
    out[4] = hops & 0xff;
    out[5] = (hops >> 8) & 0xff;
    out[6] = reserved & 0xff;
    out[7] = (reserved >> 8) & 0xff;
    out[8] = declared & 0xff;
    out[9] = (declared >> 8) & 0xff;
    out[10] = (declared >> 16) & 0xff;
    out[11] = (declared >> 24) & 0xff;
    return MSG_HEADER;
}

/* A valid message carrying `consumed`. */
static size_t valid_message(unsigned char *out, unsigned hops, const char *consumed)
{
    size_t n = strlen(consumed);
    header(out, hops, 0, (uint32_t)n);
    memcpy(out + MSG_HEADER, consumed, n);
    return MSG_HEADER + n;
}

/* sendmsg with nfds descriptors in SCM_RIGHTS; returns 0 or an errno. */
static int send_with_fds(int channel, const void *buf, size_t len, const int *fds, int nfds)
{
    struct msghdr msg;
    struct iovec iov;
    union {
        char space[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } control;
    memset(&msg, 0, sizeof msg);
    memset(&control, 0, sizeof control);
    iov.iov_base = (void *)buf;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        struct cmsghdr *cmsg;
        msg.msg_control = control.space;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    if (sendmsg(channel, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        return errno;
    }
    return 0;
}

/* A fresh outbound TCP connection to this server's own address (r->connection->local_addr). */
static int connect_to_server(request_rec *r, int *err)
{
    apr_sockaddr_t *sa = r->connection->local_addr;
    int fd = socket(sa->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa->sa, sa->salen) != 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    return fd;
}

static int listening_socket(int *err)
{
    struct sockaddr_in in;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&in, 0, sizeof in);
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&in, sizeof in) != 0 || listen(fd, 8) != 0) {
        *err = errno;
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

/* What comes back on our own copy of a forged connection within `ms`. */
static const char *read_back(request_rec *r, int fd, int ms)
{
    struct pollfd pfd = { fd, POLLIN, 0 };
    char buf[512];
    ssize_t n;
    if (poll(&pfd, 1, ms) <= 0) {
        return "(nothing within the wait)";
    }
    n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) {
        return apr_psprintf(r->pool, "(recv: %s)", errname(errno));
    }
    if (n == 0) {
        return "(closed)";
    }
    return apr_pstrndup(r->pool, buf, (apr_size_t)n);
}

static void attack_forge(request_rec *r, int client_fd)
{
    int fds[256], count = list_sockets(r, client_fd, fds, 256), i;
    static unsigned char msg[MSG_HEADER + MSG_LARGEST_CONSUMED + 64];
    const char *b_request = "GET /cgi-bin/id.cgi?forged-by-tenant-a HTTP/1.1\r\nHost: b.test\r\n"
                            "Connection: close\r\n\r\n";
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    int unix_count = 0;

    rng_state = (uint64_t)now_ms() * 6364136223846793005ULL + (uint64_t)getpid() + 1;
    for (i = 0; i < count; i++) {
        int fd = fds[i], domain = -1, type = -1, err = 0, rc, pair[2] = { -1, -1 }, tcp, lst, k;
        const char *what = socket_text(r->pool, fd, &domain, &type);
        size_t len;
        if (domain != AF_UNIX) {
            continue;
        }
        unix_count++;
        step(r, apr_psprintf(r->pool, "forge on %s", what), 1, 0, NULL);

        /* (a) a fresh outbound TCP connection to this server, asking for b.test. */
        tcp = connect_to_server(r, &err);
        if (tcp < 0) {
            step(r, "(a) connect to the server's own address", 0, err, NULL);
        }
        else {
            len = valid_message(msg, 0, b_request);
            rc = send_with_fds(fd, msg, len, &tcp, 1);
            step(r, apr_psprintf(r->pool, "(a) valid header + a b.test request + my own outbound TCP connection to %s",
                                 addr_text(r->pool, (void *)&r->connection->local_addr->sa,
                                           r->connection->local_addr->salen)),
                 rc == 0, rc, "accepted by the channel; read back on my copy: %s",
                 rc == 0 ? read_back(r, tcp, 1500) : "-");
            close(tcp);
        }
        /* (a2) the same with hops at its maximum, and with a request back to a.test. */
        tcp = connect_to_server(r, &err);
        if (tcp >= 0) {
            len = valid_message(msg, 0xffff, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
            rc = send_with_fds(fd, msg, len, &tcp, 1);
            step(r, "(a2) valid header, hops=65535, an a.test request, my own TCP connection", rc == 0, rc, NULL);
            close(tcp);
        }
        /* (b) a TCP listening socket. */
        lst = listening_socket(&err);
        if (lst >= 0) {
            len = valid_message(msg, 0, b_request);
            rc = send_with_fds(fd, msg, len, &lst, 1);
            step(r, "(b) valid header + a listening TCP socket", rc == 0, rc, NULL);
            close(lst);
        }
        else {
            step(r, "(b) make a listening socket", 0, err, NULL);
        }
        /* (c) a socketpair end (SOCK_STREAM: passes a type check, not a family check). */
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
            len = valid_message(msg, 0, b_request);
            rc = send_with_fds(fd, msg, len, &pair[0], 1);
            step(r, "(c) valid header + a Unix stream socketpair end", rc == 0, rc, NULL);
            close(pair[0]);
            close(pair[1]);
        }
        /* (d) /dev/null. */
        if (devnull >= 0) {
            len = valid_message(msg, 0, b_request);
            rc = send_with_fds(fd, msg, len, &devnull, 1);
            step(r, "(d) valid header + /dev/null", rc == 0, rc, NULL);
        }
        /* (f) no fd: random bytes, a valid header, an empty message. */
        for (k = 0; k < 200; k++) {
            msg[k] = (unsigned char)next_random();
        }
        rc = send_with_fds(fd, msg, 200, NULL, 0);
        step(r, "(f) 200 random bytes, no fd", rc == 0, rc, NULL);
        len = valid_message(msg, 0, b_request);
        rc = send_with_fds(fd, msg, len, NULL, 0);
        step(r, "(f2) valid header + b.test request, no fd", rc == 0, rc, NULL);
        rc = send_with_fds(fd, msg, 0, NULL, 0);
        step(r, "(f3) empty message, no fd", rc == 0, rc, NULL);
        /* Headers that lie: length too long, too short, reserved bits, the largest message. */
        header(msg, 1, 0, 0xffffffffu);
        rc = send_with_fds(fd, msg, MSG_HEADER + 10, devnull >= 0 ? &devnull : NULL, devnull >= 0);
        step(r, "(h) header declares 4 GiB of consumed bytes, carries 10, + /dev/null", rc == 0, rc, NULL);
        header(msg, 1, 0xbeef, 0);
        tcp = connect_to_server(r, &err);
        rc = send_with_fds(fd, msg, MSG_HEADER, tcp >= 0 ? &tcp : NULL, tcp >= 0);
        step(r, "(h2) reserved field 0xbeef + my own TCP connection", rc == 0, rc, NULL);
        if (tcp >= 0) {
            close(tcp);
        }
        for (k = 0; k < MSG_LARGEST_CONSUMED; k++) {
            msg[MSG_HEADER + k] = 'A';
        }
        header(msg, 0, 0, MSG_LARGEST_CONSUMED);
        tcp = connect_to_server(r, &err);
        rc = send_with_fds(fd, msg, MSG_HEADER + MSG_LARGEST_CONSUMED, tcp >= 0 ? &tcp : NULL, tcp >= 0);
        step(r, "(h3) largest valid message (96 KiB of 'A', no end of head) + my own TCP connection", rc == 0, rc, NULL);
        if (tcp >= 0) {
            close(tcp);
        }
        header(msg, 0, 0, MSG_LARGEST_CONSUMED + 40);
        rc = send_with_fds(fd, msg, MSG_HEADER + MSG_LARGEST_CONSUMED + 40, devnull >= 0 ? &devnull : NULL,
                           devnull >= 0);
        step(r, "(h4) message longer than the largest + /dev/null", rc == 0, rc, NULL);
        /* (i) two descriptors in one message. */
        tcp = connect_to_server(r, &err);
        if (tcp >= 0 && devnull >= 0) {
            int two[2] = { tcp, devnull };
            len = valid_message(msg, 0, b_request);
            rc = send_with_fds(fd, msg, len, two, 2);
            step(r, "(i) valid header + two fds (TCP connection, /dev/null)", rc == 0, rc, NULL);
        }
        if (tcp >= 0) {
            close(tcp);
        }

        /* (g) as many as the channel takes for ~2 s: garbage without fd, /dev/null and socketpair
         * ends behind valid headers; every 50th a real TCP connection asking for b.test. */
        {
            long long until = now_ms() + 2000, started = now_ms();
            long sent = 0, eagain = 0, other = 0, tcp_sent = 0;
            int first_err = 0, spare[2] = { -1, -1 };
            socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, spare);
            while (now_ms() < until) {
                int kind = (int)((sent + eagain + other) % 50), one = -1, n = 0, ok;
                if (kind == 49) {
                    one = connect_to_server(r, &err);
                    len = valid_message(msg, 0, b_request);
                    n = one >= 0;
                }
                else if (kind % 3 == 0) {
                    for (k = 0; k < 48; k++) {
                        msg[k] = (unsigned char)next_random();
                    }
                    len = 48;
                }
                else {
                    one = kind % 3 == 1 ? devnull : spare[0];
                    len = valid_message(msg, 0, b_request);
                    n = one >= 0;
                }
                ok = send_with_fds(fd, msg, len, n ? &one : NULL, n);
                if (ok == 0) {
                    sent++;
                    if (kind == 49) {
                        tcp_sent++;
                    }
                }
                else if (ok == EAGAIN) {
                    struct pollfd pfd = { fd, POLLOUT, 0 };
                    eagain++;
                    poll(&pfd, 1, 5);
                }
                else {
                    other++;
                    if (!first_err) {
                        first_err = ok;
                    }
                    if (other > 1000 && sent == 0) {
                        break;
                    }
                }
                if (kind == 49 && one >= 0) {
                    close(one);
                }
            }
            if (spare[0] >= 0) {
                close(spare[0]);
                close(spare[1]);
            }
            step(r, "(g) flood of forged hand-backs for ~2 s", sent > 0, first_err ? first_err : EAGAIN,
                 "sent=%ld (of which %ld with a TCP connection) eagain=%ld other_errors=%ld first_error=%s in %ld ms",
                 sent, tcp_sent, eagain, other, errname(first_err), (long)(now_ms() - started));
        }
    }
    /* Last, because a multiplexer that takes this request's own client connection may write
     * to it (408 after its head timeout) while this report is still being written:
     * (e) the client connection with garbage bytes; (e2) with a valid header and a head that
     * never completes. */
    for (i = 0; i < count; i++) {
        int fd = fds[i], domain = -1, k, rc;
        size_t len;
        socket_text(r->pool, fd, &domain, NULL);
        if (domain != AF_UNIX) {
            continue;
        }
        for (k = 0; k < 64; k++) {
            msg[k] = (unsigned char)next_random();
        }
        rc = send_with_fds(fd, msg, 64, &client_fd, 1);
        step(r, apr_psprintf(r->pool, "(e) fd %d: 64 random bytes + this request's client connection", fd),
             rc == 0, rc, NULL);
        len = valid_message(msg, 0, "GET / HTTP/1.1\r\nHost: b.te");
        rc = send_with_fds(fd, msg, len, &client_fd, 1);
        step(r, apr_psprintf(r->pool, "(e2) fd %d: valid header + an incomplete head + this request's client "
                             "connection", fd), rc == 0, rc, NULL);
    }
    if (devnull >= 0) {
        close(devnull);
    }
    step(r, apr_psprintf(r->pool, "Unix sockets held by this worker: %d", unix_count), unix_count > 0, ENOENT, NULL);
}

/* Empty messages only: a zero-length SOCK_SEQPACKET message reads as 0 bytes, like the EOF of
 * a shut-down peer; a receiver must not take one for the other. */
static void attack_empty(request_rec *r, int client_fd)
{
    int fds[256], count = list_sockets(r, client_fd, fds, 256), i, k;
    for (i = 0; i < count; i++) {
        int fd = fds[i], domain = -1, sent = 0, first_err = 0;
        const char *what = socket_text(r->pool, fd, &domain, NULL);
        if (domain != AF_UNIX) {
            continue;
        }
        for (k = 0; k < 20; k++) {
            int rc = send_with_fds(fd, "", 0, NULL, 0);
            if (rc == 0) {
                sent++;
            }
            else if (!first_err) {
                first_err = rc;
            }
            sleep_ms(5);
        }
        step(r, apr_psprintf(r->pool, "20 empty messages on %s", what), sent > 0, first_err,
             "sent=%d first_error=%s", sent, errname(first_err));
    }
}

/* ------------------------------------------------------------------ */
/* keepalives                                                           */
/* ------------------------------------------------------------------ */

/* ChildTable.swift: the current connection's client (high, then low) at 256 and its hand-off
 * ticket at 272 of the worker's detail page. */
#define CLIENT_OFFSET 256
#define TICKET_OFFSET 272

/* Hands this worker's own client connection back, with its true ticket and a request for
 * b.test, saying it has already been kept alive for `lie` answers. Nothing may reach the
 * client from here (the connection is B's to answer now): the report goes to the error log,
 * and the connection is marked aborted, so httpd writes nothing and does not shut it down. */
static int attack_keepalives(request_rec *r, int client_fd, uint32_t lie)
{
    int i, sent = 0, first_err = 0;
    uintptr_t detail = own_detail_page();
    static unsigned char msg[MSG_HEADER + 256];
    const char *b_request = "GET /cgi-bin/id.cgi?keepalives-lie HTTP/1.1\r\nHost: b.test\r\n\r\n";
    uint64_t ticket, high, low;
    size_t len;
    int fds[256], socket_count = list_sockets(r, client_fd, fds, 256);

    if (!detail || client_fd < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "peruser-attack keepalives: no detail page or client");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    memcpy(&high, (void *)(detail + CLIENT_OFFSET), 8);
    memcpy(&low, (void *)(detail + CLIENT_OFFSET + 8), 8);
    memcpy(&ticket, (void *)(detail + TICKET_OFFSET), 8);
    len = valid_message(msg, 0, b_request);
    for (i = 0; i < 8; i++) {
        msg[12 + i] = (unsigned char)(ticket >> (8 * i));
        msg[20 + i] = (unsigned char)(high >> (56 - 8 * i));
        msg[28 + i] = (unsigned char)(low >> (56 - 8 * i));
    }
    for (i = 0; i < 4; i++) {
        msg[44 + i] = (unsigned char)(lie >> (8 * i));
    }
    for (i = 0; i < socket_count; i++) {
        int domain = -1, rc;
        socket_text(r->pool, fds[i], &domain, NULL);
        if (domain != AF_UNIX) {
            continue;
        }
        rc = send_with_fds(fds[i], msg, len, &client_fd, 1);
        if (rc == 0) {
            sent++;
        }
        else if (!first_err) {
            first_err = rc;
        }
    }
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                  "peruser-attack keepalives: ticket %" APR_UINT64_T_HEX_FMT ", handed back on %d socket(s), "
                  "first error %s", (apr_uint64_t)ticket, sent, errname(first_err));
    r->connection->keepalive = AP_CONN_CLOSE;
    r->connection->aborted = 1;
    return DONE;
}

/* ------------------------------------------------------------------ */
/* keepfd / readkept                                                    */
/* ------------------------------------------------------------------ */

static void attack_keepfd(request_rec *r, int client_fd)
{
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    if (kept_fd >= 0) {
        close(kept_fd);
        kept_fd = -1;
    }
    kept_fd = fcntl(client_fd, F_DUPFD_CLOEXEC, 900);
    if (kept_fd >= 0 && getpeername(kept_fd, (struct sockaddr *)&peer, &peer_len) == 0) {
        apr_cpystrn(kept_peer, addr_text(r->pool, &peer, peer_len), sizeof kept_peer);
    }
    step(r, apr_psprintf(r->pool, "dup the client connection (fd %d) to a high descriptor", client_fd),
         kept_fd >= 0, errno, "kept fd %d, peer %s", kept_fd, kept_peer);
}

static void attack_readkept(request_rec *r)
{
    char buf[4096];
    ssize_t n;
    struct pollfd pfd;
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    if (kept_fd < 0) {
        step(r, "read the kept descriptor", 0, EBADF, "no descriptor was kept in this worker (pid %ld)",
             (long)getpid());
        return;
    }
    if (getpeername(kept_fd, (struct sockaddr *)&peer, &peer_len) != 0) {
        peer_len = 0;
    }
    step(r, "the kept descriptor is still a connected socket", peer_len > 0, errno, "fd %d peer %s (kept: %s)",
         kept_fd, addr_text(r->pool, &peer, peer_len), kept_peer);
    n = recv(kept_fd, buf, sizeof buf, MSG_DONTWAIT | MSG_PEEK);
    line(r, apr_psprintf(r->pool, "{\"step\": \"MSG_PEEK|MSG_DONTWAIT on the kept descriptor\", \"ok\": %s, "
                                  "\"errno\": %s, \"bytes\": %ld, \"peeked\": %s}",
                         n > 0 ? "true" : "false", js(r->pool, n >= 0 ? "" : errname(errno)), (long)n,
                         n > 0 ? js_n(r->pool, buf, (size_t)n) : "\"\""));
    pfd.fd = kept_fd;
    pfd.events = POLLOUT;
    pfd.revents = 0;
    poll(&pfd, 1, 0);
    step(r, "the kept descriptor is writable (poll POLLOUT; nothing written)", (pfd.revents & POLLOUT) != 0, 0,
         "revents 0x%x", pfd.revents);
}

/* ------------------------------------------------------------------ */
/* signal                                                               */
/* ------------------------------------------------------------------ */

static int uid_of(pid_t pid)
{
    char path[64], buf[256];
    FILE *f;
    int uid = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    while (fgets(buf, sizeof buf, f)) {
        if (strncmp(buf, "Uid:", 4) == 0) {
            uid = atoi(buf + 4);
            break;
        }
    }
    fclose(f);
    return uid;
}

static void kill_one(request_rec *r, pid_t pid, const char *who)
{
    int rc, target_uid;
    if (pid <= 1 || pid == getpid()) {
        step(r, apr_psprintf(r->pool, "SIGKILL %s %ld", who, (long)pid), 0, EINVAL,
             "skipped (never 0, 1, negative, or this worker itself)");
        return;
    }
    target_uid = uid_of(pid);
    rc = kill(pid, SIGKILL);
    line(r, apr_psprintf(r->pool, "{\"step\": %s, \"ok\": %s, \"errno\": %s, \"target_pid\": %ld, "
                                  "\"target_uid\": %d, \"detail\": %s}",
                         js(r->pool, apr_psprintf(r->pool, "SIGKILL %s %ld", who, (long)pid)),
                         rc == 0 ? "true" : "false", js(r->pool, rc == 0 ? "" : errname(errno)), (long)pid,
                         target_uid, js(r->pool, rc == 0 ? "SIGNAL DELIVERED" : "refused")));
}

static void attack_signal(request_rec *r)
{
    mapping maps[64];
    int count = shared_state_mappings(maps, 64), i;
    unsigned char *table = NULL;
    size_t size = 0;
    kill_one(r, getppid(), "the parent (getppid)");
    for (i = 0; i < count; i++) {
        if (strstr(maps[i].name, "peruser-child-table") && (!table || (unsigned char *)maps[i].start < table)) {
            table = (unsigned char *)maps[i].start; /* the lowest mapping holds the header */
        }
    }
    for (i = 0; i < count; i++) {
        if (strstr(maps[i].name, "peruser-child-table") && (unsigned char *)maps[i].start >= table) {
            size_t end = (size_t)((unsigned char *)maps[i].end - table);
            if (end > size) {
                size = end;
            }
        }
    }
    if (!table || size < 64) {
        step(r, "find the child table", 0, ENOENT, NULL);
        return;
    }
    {
        uint32_t magic, slots, slot;
        memcpy(&magic, table, 4);
        memcpy(&slots, table + 8, 4);
        step(r, "read the child table header", 1, 0, "magic 0x%08x slots %u size %lu", magic, slots,
             (unsigned long)size);
        for (slot = 0; slot < slots && 64 + (size_t)(slot + 1) * 16 <= size; slot++) {
            int32_t pid, env;
            uint8_t type;
            memcpy(&pid, table + 64 + slot * 16, 4);
            memcpy(&type, table + 64 + slot * 16 + 4, 1);
            memcpy(&env, table + 64 + slot * 16 + 8, 4);
            if (type == 0 || pid == 0) {
                continue;
            }
            kill_one(r, (pid_t)pid, apr_psprintf(r->pool, "table slot %u (type %u, environment %d) pid", slot,
                                                 type, env));
        }
    }
}

/* ------------------------------------------------------------------ */


/* ------------------------------------------------------------------ */
/* holdings                                                             */
/* ------------------------------------------------------------------ */

#define MAX_NEEDLES 16

static int unhex(const char *text, size_t len, unsigned char *out)
{
    size_t i;
    for (i = 0; i + 1 < len; i += 2) {
        unsigned hi, lo;
        if (sscanf(text + i, "%1x%1x", &hi, &lo) != 2) return -1;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    return (int)(len / 2);
}

static void attack_holdings(request_rec *r)
{
    const char *list = NULL;
    unsigned char *needles[MAX_NEEDLES];
    int lengths[MAX_NEEDLES], hits[MAX_NEEDLES], count = 0, i;
    char *where[MAX_NEEDLES];
    FILE *maps;
    char text[1024];
    int mem;
    size_t chunk = 1 << 20;
    unsigned char *buffer;
    DIR *dir;
    struct dirent *entry;

    if (r->args) {
        const char *found = strstr(r->args, "needles=");
        if (found) list = found + strlen("needles=");
    }
    while (list && *list && count < MAX_NEEDLES) {
        size_t len = strcspn(list, ",&");
        needles[count] = apr_palloc(r->pool, len / 2 + 1);
        lengths[count] = unhex(list, len, needles[count]);
        hits[count] = 0;
        where[count] = "";
        if (lengths[count] > 0) count++;
        list += len;
        if (*list == ',') list++; else break;
    }
    buffer = malloc(chunk + 4096);
    mem = 0; /* process_vm_readv on itself: allowed even when not dumpable, and it never faults */
    maps = fopen("/proc/self/maps", "r");
    step(r, "scan-open", mem >= 0 && maps && buffer, errno, "%d needles", count);
    while (mem >= 0 && maps && buffer && fgets(text, sizeof text, maps)) {
        unsigned long start, end, offset;
        char perms[8] = "", path[512] = "";
        unsigned long at;
        if (sscanf(text, "%lx-%lx %7s %lx %*s %*s %511[^\n]", &start, &end, perms, &offset, path) < 4) continue;
        if (perms[0] != 'r' || strstr(path, "[vvar]") || strstr(path, "[vsyscall]")) continue;
        /* Overlapping reads so a needle across a chunk boundary is still seen; a page that
         * cannot be read (a file mapping past its end) is skipped. */
        for (at = start; at < end;) {
            size_t want = end - at < chunk + 256 ? end - at : chunk + 256;
            struct iovec local = { buffer, want }, remote = { (void *)at, want };
            ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
            size_t advance;
            int n;
            if (got <= 0) {
                at = (at | 4095) + 1;
                continue;
            }
            advance = at + (size_t)got >= end || got <= 256 ? (size_t)got : (size_t)got - 256;
            for (n = 0; n < count; n++) {
                unsigned char *p = buffer, *limit = buffer + got;
                while (p + lengths[n] <= limit) {
                    unsigned char *q = memchr(p, needles[n][0], (size_t)(limit - p));
                    if (!q || q + lengths[n] > limit) break;
                    if ((size_t)(q - buffer) < advance && memcmp(q, needles[n], lengths[n]) == 0) {
                        unsigned long address = at + (unsigned long)(q - buffer);
                        int own = address >= (unsigned long)(uintptr_t)buffer
                                  && address < (unsigned long)(uintptr_t)buffer + chunk + 4096;
                        int k;
                        /* Not the needles' own decoded copies, nor the scan buffer. */
                        for (k = 0; k < count && !own; k++) {
                            own = address + lengths[n] > (unsigned long)(uintptr_t)needles[k]
                                  && address < (unsigned long)(uintptr_t)needles[k] + lengths[k];
                        }
                        if (!own) {
                            hits[n]++;
                            if (hits[n] <= 8) {
                                where[n] = apr_psprintf(r->pool, "%s %s@%lx(%s)", where[n], perms, address,
                                                        path[0] ? path : "anonymous");
                            }
                        }
                    }
                    p = q + 1;
                }
            }
            at += advance;
        }
    }
    for (i = 0; i < count; i++) {
        line(r, apr_psprintf(r->pool, "{\"needle\": %d, \"hits\": %d, \"where\": %s}", i, hits[i],
                             js(r->pool, where[i])));
    }
    if (maps) fclose(maps);
    free(buffer);

    dir = opendir("/proc/self/fd");
    while (dir && (entry = readdir(dir))) {
        char link[600], target[512];
        ssize_t n;
        if (entry->d_name[0] == '.') continue;
        snprintf(link, sizeof link, "/proc/self/fd/%s", entry->d_name);
        n = readlink(link, target, sizeof target - 1);
        target[n > 0 ? n : 0] = '\0';
        if (strcmp(target, "anon_inode:[eventpoll]") == 0) {
            /* An epoll: the inodes of what it watches (fdinfo's "ino:" fields, in hex). An epoll
             * inherited from the root would let this process take the root's watches away. */
            char info[600], text2[512];
            const char *watches = "";
            FILE *f;
            snprintf(info, sizeof info, "/proc/self/fdinfo/%s", entry->d_name);
            f = fopen(info, "r");
            while (f && fgets(text2, sizeof text2, f)) {
                const char *ino = strstr(text2, " ino:");
                if (strncmp(text2, "tfd:", 4) == 0 && ino) {
                    watches = apr_psprintf(r->pool, "%s%s%lu", watches, *watches ? ", " : "",
                                           strtoul(ino + 5, NULL, 16));
                }
            }
            if (f) fclose(f);
            line(r, apr_psprintf(r->pool, "{\"fd\": %s, \"target\": %s, \"watches\": [%s]}", entry->d_name,
                                 js(r->pool, target), watches));
            continue;
        }
        line(r, apr_psprintf(r->pool, "{\"fd\": %s, \"target\": %s}", entry->d_name, js(r->pool, target)));
    }
    if (dir) closedir(dir);

    maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(text, sizeof text, maps)) {
        char perms[8] = "", device[16] = "", path[512] = "";
        unsigned long start, end, inode = 0;
        if (sscanf(text, "%lx-%lx %7s %*s %15s %lu %511[^\n]", &start, &end, perms, device, &inode, path) < 5) continue;
        if (perms[1] == 'w' && perms[3] == 's') {
            line(r, apr_psprintf(r->pool, "{\"shared_writable\": %s, \"device\": %s, \"inode\": %lu, \"size\": %lu}",
                                 js(r->pool, path), js(r->pool, device), inode, end - start));
        }
    }
    if (maps) fclose(maps);
}

/* The "requests" probe's counts: request_recs of client connections (not HTTP/2 streams,
 * subrequests or internal redirects), and those whose head was read. */
static unsigned long requests_created, requests_headed;

static int is_client_request(const request_rec *r)
{
    return !r->connection->master && !r->main && !r->prev;
}

static int count_created(request_rec *r)
{
    if (is_client_request(r)) requests_created++;
    return OK;
}

static int count_headed(request_rec *r)
{
    if (is_client_request(r)) requests_headed++;
    return DECLINED;
}

static int attack_handler(request_rec *r)
{
    apr_table_t *args = NULL;
    const char *attack;
    int client_fd;

    if (!r->handler || strcmp(r->handler, "peruser-attack") != 0) {
        return DECLINED;
    }
    ap_args_to_table(r, &args);
    attack = args ? apr_table_get(args, "attack") : NULL;
    if (!attack) {
        attack = "none";
    }
    only_fds = args ? apr_table_get(args, "fd") : NULL;
    client_fd = client_fd_of(r);
    if (strcmp(attack, "keepalives") == 0) {
        const char *count = args ? apr_table_get(args, "count") : NULL;
        /* writes nothing to its client */
        return attack_keepalives(r, client_fd, count ? (uint32_t)strtoul(count, NULL, 10) : 0xffffffffu);
    }
    ap_set_content_type(r, "text/plain");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    line(r, apr_psprintf(r->pool,
                         "{\"attack\": %s, \"uid\": %ld, \"euid\": %ld, \"gid\": %ld, \"pid\": %ld, "
                         "\"ppid\": %ld, \"client_fd\": %d, \"vhost\": %s}",
                         js(r->pool, attack), (long)getuid(), (long)geteuid(), (long)getgid(), (long)getpid(),
                         (long)getppid(), client_fd, js(r->pool, r->server->server_hostname)));
    if (strcmp(attack, "table") == 0) {
        attack_table(r);
    }
    else if (strcmp(attack, "sockets") == 0) {
        attack_sockets(r, client_fd);
    }
    else if (strcmp(attack, "forge") == 0) {
        attack_forge(r, client_fd);
    }
    else if (strcmp(attack, "empty") == 0) {
        attack_empty(r, client_fd);
    }
    else if (strcmp(attack, "keepfd") == 0) {
        attack_keepfd(r, client_fd);
    }
    else if (strcmp(attack, "readkept") == 0) {
        attack_readkept(r);
    }
    else if (strcmp(attack, "holdings") == 0) {
        attack_holdings(r);
    }
    else if (strcmp(attack, "cells") == 0) {
        const char *seconds = apr_table_get(args, "seconds");
        attack_cells(r, seconds ? atoi(seconds) : 4);
    }
    else if (strcmp(attack, "cellszero") == 0) {
        const char *seconds = apr_table_get(args, "seconds");
        attack_cellszero(r, seconds ? atoi(seconds) : 10);
    }
    else if (strcmp(attack, "signal") == 0) {
        attack_signal(r);
    }
    else if (strcmp(attack, "requests") == 0) {
        line(r, apr_psprintf(r->pool, "{\"created\": %lu, \"headed\": %lu}", requests_created, requests_headed));
    }
    else if (strcmp(attack, "none") != 0) {
        step(r, "unknown attack", 0, EINVAL, NULL);
    }
    line(r, "{\"done\": true}");
    return OK;
}

static void register_hooks(apr_pool_t *p)
{
    ap_hook_handler(attack_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_create_request(count_created, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_read_request(count_headed, NULL, NULL, APR_HOOK_MIDDLE);
}

module AP_MODULE_DECLARE_DATA peruser_attack_module = {
    STANDARD20_MODULE_STUFF,
    NULL, NULL, NULL, NULL, NULL,
    register_hooks,
    AP_MODULE_FLAG_NONE
};

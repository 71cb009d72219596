/* mod_mpm_peruser: the C half of the Peruser MPM for Apache httpd 2.4.
 *
 * Only what must be C lives here: the module struct and directive table, Apache hooks, fork and
 * privilege changes, fd passing (CMSG_* macros) and variadic logging. Decisions (whom to spawn,
 * how to read a request head, message validation) are Swift, behind peruser_swift.h.
 *
 * Processes: the root parent supervises only. Multiplexers (User/Group) accept, peek at the
 * request head, find the vhost with Apache's own rules and pass the socket over the vhost's
 * environment channel. Workers (the environment's user) serve it with ap_process_connection and
 * hand a kept-alive connection back when its next request belongs to another environment. */

#include "httpd.h"
#include "http_main.h"
#include "http_log.h"
#include "http_config.h"
#include "http_core.h"
#include "http_connection.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_vhost.h"
#include "http_ssl.h"
#include "scoreboard.h"
#include "mod_status.h"
#include "ap_mpm.h"
#include "ap_listen.h"
#include "mpm_common.h"
#include "unixd.h"
#include "util_filter.h"
#include "apr_strings.h"
#include "apr_uri.h"
#include "apr_portable.h"
#include "apr_signal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "peruser_shim.h"
#include "peruser_swift.h"

module AP_MODULE_DECLARE_DATA mpm_peruser_module;

#define MOST_SERVER_LIMIT 20000
/* Cgroup directories per <Processor>: one per v1 hierarchy is plenty. */
#define PERUSER_MAX_CGROUPS 16
#define DEFAULT_MAX_REQUESTS_PER_CHILD 1000
/* A kept-alive request head longer than this cannot be handed to another environment. */
#define HEAD_RECORD_MAX (64 * 1024)
/* How long a hard stop waits for children before SIGKILL. */
#define STOP_GRACE_MS 5000
/* The parent's maintenance round when nothing wakes it sooner. */
#define MAINTENANCE_INTERVAL_MS 200

/* ---- Retained across restarts (the module itself is unloaded and reloaded) ---- */

typedef struct {
    ap_unixd_mpm_retained_data *mpm;
    /* The parent's private child records, MOST_SERVER_LIMIT entries (parent memory). */
    peruser_child_record *records;
    /* Scoreboard slots of the current scoreboard (ServerLimit when it was created). */
    int scoreboard_slots;
    /* The demand pipe (multiplexers write [1], the parent reads [0]), shared by all
     * generations. */
    int demand[2];
    /* The receiving ends of the previous generation's hand-back channels (malloc'd; index:
     * that generation's environment). This generation's multiplexers read them too, so old
     * workers finishing a kept-alive connection during a graceful restart can give it back. */
    int *previous_handback;
    int previous_handback_count;
    unsigned previous_generation;
    /* The multiplexers' secret (the key of hand-back tickets): a page that only the parent and
     * the multiplexers keep mapped; workers unmap it before they drop privileges. */
    void *mux_secret;
    /* The parent's end of each multiplexer's control channel, by slot (-1: none), on which
     * it passes renewed channels of an environment (MOST_SERVER_LIMIT entries, malloc'd). */
    int *control;
    /* This generation's shared child table, and the previous one (kept mapped for one more
     * generation); the multiplexers' own state (availability), which workers unmap. */
    void *table;
    size_t table_size;
    int table_slots;
    int table_environments;
    int table_fd; /* kept (close-on-exec) so each new worker can map its view of the table */
    void *previous_table;
    size_t previous_table_size;
    int previous_table_environments;
    void *mux_state;
    size_t mux_state_size;
} peruser_retained_data;

static peruser_retained_data *retained;

/* ---- Configuration of this pass ---- */

typedef struct {
    int environment; /* index into the Swift environment table, or -1: none */
} peruser_server_conf;

static int one_process;
static apr_pool_t *pconf;

/* Set by post_config: the loaded module that is not thread-safe, for which HTTP/2 was switched
 * off (NULL: none, or mod_http2 is not loaded). */
static const char *h2_switched_off_for;

/* PeruserHandBack: whether a kept-alive connection whose next request is for another
 * environment is handed back (On, the default) or answered 421 and closed (Off). */
static int handback_enabled = 1;

/* MultiplexerUser/MultiplexerGroup: the multiplexers' own identity (default: User/Group).
 * Resolved when the directive is read; name NULL when not given. */
static struct {
    const char *user, *group;
    uid_t uid;
    gid_t gid;
    const ap_directive_t *user_line, *group_line;
} mux_identity;

/* ---- This generation ---- */

/* Two one-way channels per environment, none shared between environments:
 * channels[CHANNEL(e, HANDOFF_SEND)] multiplexers -> channels[CHANNEL(e, HANDOFF_RECEIVE)] e's workers,
 * channels[CHANNEL(e, HANDBACK_SEND)] e's workers -> channels[CHANNEL(e, HANDBACK_RECEIVE)] multiplexers. */
enum { HANDOFF_SEND, HANDOFF_RECEIVE, HANDBACK_SEND, HANDBACK_RECEIVE, CHANNEL_ENDS };
#define CHANNEL(e, end) (CHANNEL_ENDS * (e) + (end))
static int *channels;

/* A multiplexer's end of its control channel. */
static int control_fd = -1;
static int channel_env_count;

/* ---- Child state ---- */

static apr_pool_t *pchild;
static int my_slot = -1;
static int my_environment = -1;
static int is_worker;
static pid_t parent_pid;
/* Set by signals: SIGUSR1 asks a child to exit when done; SIGWINCH asks a worker to drain
 * its channel first (its generation's multiplexers are gone). */
static volatile sig_atomic_t retire_requested;
static volatile sig_atomic_t drain_requested;

/* Multiplexer: a pool cleared for every routing decision. */
static apr_pool_t *route_pool;

/* Worker: the connection being served. */
typedef struct {
    ap_filter_t *filter;
    int recording;
    int overflow;
    unsigned char *buf;
    apr_size_t len;
} head_record;

static struct {
    apr_socket_t *socket;
    int fd;
    uint64_t ticket;              /* returned with a hand-back (HandbackTicket) */
    const unsigned char *pending;    /* bytes to put in front of the socket */
    apr_size_t pending_len;
    int received_hops;
    int requests_served;
    int handed_back;
    int socket_reads_paused;  /* while handing back: take only what filters already buffered */
    head_record *record;
} current;

static ap_filter_rec_t *record_filter_handle;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ===================================================================== */
/* Shim functions called from Swift (peruser_shim.h)                      */
/* ===================================================================== */

void peruser_shim_log(int level, const char *message)
{
    ap_log_error(APLOG_MARK, level, 0, ap_server_conf, "%s", message);
}

int peruser_shim_send_fd(int channel, int fd, const void *buf, size_t len)
{
    struct msghdr msg;
    struct iovec iov;
    union {
        char space[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct cmsghdr *cmsg;

    memset(&msg, 0, sizeof msg);
    memset(&control, 0, sizeof control);
    iov.iov_base = (void *)buf;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));

    for (;;) {
        ssize_t n = sendmsg(channel, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == (ssize_t)len) {
            return 0;
        }
        if (n >= 0) {
            return -EMSGSIZE; /* a seqpacket send is all or nothing */
        }
        if (errno != EINTR) {
            return -errno;
        }
    }
}

ssize_t peruser_shim_recv_fd(int channel, void *buf, size_t cap, int nonblocking, int *fd)
{
    struct msghdr msg;
    struct iovec iov;
    union {
        /* Room for more fds than we accept, so that extras are received and closed rather than
         * silently left in flight. */
        char space[CMSG_SPACE(sizeof(int) * 8)];
        struct cmsghdr align;
    } control;
    struct cmsghdr *cmsg;
    ssize_t n;
    int received = -1, fds_seen = 0, bad = 0;

    *fd = -1;
    memset(&msg, 0, sizeof msg);
    iov.iov_base = buf;
    iov.iov_len = cap;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;

    n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0));
    if (n < 0) {
        return -errno;
    }
    if (n == 0 && msg.msg_controllen == 0) {
        return 0; /* every writer is gone (or an empty message): nothing to take */
    }
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS
            && cmsg->cmsg_len >= CMSG_LEN(0)) {
            size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            size_t i;
            for (i = 0; i < count; i++) {
                int one;
                memcpy(&one, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
                if (fds_seen++ == 0) {
                    received = one;
                }
                else {
                    close(one);
                }
            }
        }
        else {
            bad = 1;
        }
    }
    if (bad || fds_seen != 1 || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) || n == 0) {
        /* n == 0 here: an empty message that carried fds. The caller logs (rate-limited:
         * a tenant can send these as fast as it likes). */
        if (received >= 0) {
            close(received);
        }
        return -EBADMSG;
    }
    *fd = received;
    return n;
}

/* Fills an apr_sockaddr_t from a kernel address, as apr does for its own sockets. */
static apr_sockaddr_t *make_sockaddr(apr_pool_t *p, const struct sockaddr_storage *ss)
{
    apr_sockaddr_t *sa = apr_pcalloc(p, sizeof *sa);
    sa->pool = p;
    sa->family = ss->ss_family;
    if (ss->ss_family == AF_INET6) {
        memcpy(&sa->sa.sin6, ss, sizeof(struct sockaddr_in6));
        sa->port = ntohs(sa->sa.sin6.sin6_port);
        sa->salen = sizeof(struct sockaddr_in6);
        sa->addr_str_len = INET6_ADDRSTRLEN;
        sa->ipaddr_ptr = &sa->sa.sin6.sin6_addr;
        sa->ipaddr_len = sizeof(struct in6_addr);
    }
    else {
        memcpy(&sa->sa.sin, ss, sizeof(struct sockaddr_in));
        sa->port = ntohs(sa->sa.sin.sin_port);
        sa->salen = sizeof(struct sockaddr_in);
        sa->addr_str_len = INET_ADDRSTRLEN;
        sa->ipaddr_ptr = &sa->sa.sin.sin_addr;
        sa->ipaddr_len = sizeof(struct in_addr);
    }
    return sa;
}

static int server_environment(const server_rec *s)
{
    const peruser_server_conf *conf = ap_get_module_config(s->module_config, &mpm_peruser_module);
    return conf ? conf->environment : -1;
}

static const char *vhost_description(apr_pool_t *p, const server_rec *s)
{
    const server_addr_rec *addr = s->addrs;
    return apr_psprintf(p, "%s (<VirtualHost %s:%u> on line %u of %s)",
                        s->server_hostname ? s->server_hostname : "(no ServerName)",
                        addr && addr->virthost ? addr->virthost : "*",
                        addr ? (unsigned)addr->host_port : (unsigned)s->port,
                        s->defn_line_number, s->defn_name ? s->defn_name : "(main config)");
}

int peruser_shim_route(int fd, const char *host, const char *target)
{
    struct sockaddr_storage local, peer;
    socklen_t local_len = sizeof local, peer_len = sizeof peer;
    conn_rec *c;
    request_rec *r;
    char ip[INET6_ADDRSTRLEN];
    int environment;

    apr_pool_clear(route_pool);
    if (getsockname(fd, (struct sockaddr *)&local, &local_len) != 0
        || getpeername(fd, (struct sockaddr *)&peer, &peer_len) != 0
        || (local.ss_family != AF_INET && local.ss_family != AF_INET6)) {
        return PERUSER_ROUTE_NO_ENVIRONMENT;
    }

    /* A minimal connection and request: just what Apache's vhost matching reads. */
    c = apr_pcalloc(route_pool, sizeof *c);
    c->pool = route_pool;
    c->base_server = ap_server_conf;
    c->local_addr = make_sockaddr(route_pool, &local);
    c->client_addr = make_sockaddr(route_pool, &peer);
    if (peer.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, ip, sizeof ip);
    }
    else {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, ip, sizeof ip);
    }
    c->client_ip = apr_pstrdup(route_pool, ip);
    c->notes = apr_table_make(route_pool, 1);
    ap_update_vhost_given_ip(c);

    r = apr_pcalloc(route_pool, sizeof *r);
    r->pool = route_pool;
    r->connection = c;
    r->server = c->base_server;
    r->status = HTTP_OK;
    /* Apache's vhost code may log about this request (at debug level: an absolute URI with a
     * Host, a bad host name), which runs every module's generate_log_id hook; those read the
     * request's tables (mod_unique_id: subprocess_env), so none of them may be NULL. */
    r->headers_in = apr_table_make(route_pool, 1);
    r->headers_out = apr_table_make(route_pool, 1);
    r->err_headers_out = apr_table_make(route_pool, 1);
    r->subprocess_env = apr_table_make(route_pool, 1);
    r->notes = apr_table_make(route_pool, 1);
    r->per_dir_config = ap_server_conf->lookup_defaults;
    r->request_config = ap_create_request_config(route_pool);
    r->useragent_addr = c->client_addr;
    r->useragent_ip = c->client_ip;
    r->uri = "/";
    if (target && target[0] != '/' && strcmp(target, "*") != 0) {
        /* absolute-form: the host in the request line wins over Host (RFC 9112 3.2.2) */
        apr_uri_t uri;
        if (apr_uri_parse(route_pool, target, &uri) == APR_SUCCESS) {
            if (uri.hostname) {
                r->hostname = uri.hostname;
            }
            if (uri.path) {
                r->uri = uri.path;
            }
        }
    }
    else if (target && target[0] == '/') {
        r->uri = apr_pstrndup(route_pool, target, strcspn(target, "?"));
    }
    if (host) {
        apr_table_setn(r->headers_in, "Host", host);
    }
    ap_update_vhost_from_headers(r);

    environment = server_environment(r->server);
    if (environment < 0) {
        long left_out = peruser_log_admit(PERUSER_NOISY_NO_ENVIRONMENT);
        if (left_out >= 0) {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, ap_server_conf,
                         "peruser: virtual host %s has no ServerEnvironment; answered 503 to %s "
                         "(Host or TLS server name: %s; a TLS connection is closed instead)%s",
                         vhost_description(route_pool, r->server), c->client_ip, host ? host : "-",
                         left_out ? apr_psprintf(route_pool, " (%ld similar lines left out)", left_out) : "");
        }
        return PERUSER_ROUTE_NO_ENVIRONMENT;
    }
    return environment;
}

/* ===================================================================== */
/* Configuration                                                          */
/* ===================================================================== */

static void *create_server_config(apr_pool_t *p, server_rec *s)
{
    peruser_server_conf *conf = apr_pcalloc(p, sizeof *conf);
    conf->environment = -1;
    return conf;
}

/* A vhost that names no environment is served by the main server's, if it has one. */
static void *merge_server_config(apr_pool_t *p, void *base_conf, void *virt_conf)
{
    const peruser_server_conf *base = base_conf, *virt = virt_conf;
    peruser_server_conf *merged = apr_pcalloc(p, sizeof *merged);
    merged->environment = virt->environment >= 0 ? virt->environment : base->environment;
    return merged;
}

static const char *parse_count(cmd_parms *cmd, const char *directive, const char *arg,
                               int low, int high, int *out)
{
    char error[256];
    if (peruser_config_parse_count(directive, arg, low, high, out, error, sizeof error) != 0) {
        return apr_pstrdup(cmd->pool, error);
    }
    return NULL;
}

/* Global limits: each is a whole number; 0 disables where the spec says so. */
static const char *set_global_limit(cmd_parms *cmd, void *dummy, const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    const char *name = cmd->cmd->name;
    int low = (intptr_t)cmd->info, value;
    char error[256];
    if (err) {
        return err;
    }
    if ((err = parse_count(cmd, name, arg, low, MOST_SERVER_LIMIT * 1000, &value))) {
        return err;
    }
    if (peruser_config_set_limit(name, value, error, sizeof error) != 0) {
        return apr_pstrdup(cmd->pool, error);
    }
    return NULL;
}

static const char *set_processor_wait(cmd_parms *cmd, void *dummy, const char *seconds,
                                      const char *levels)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    int wait, count = 10;
    if (err) {
        return err;
    }
    if ((err = parse_count(cmd, "ProcessorWaitTimeout", seconds, 0, 3600, &wait))) {
        return err;
    }
    if (levels && (err = parse_count(cmd, "ProcessorWaitTimeout levels", levels, 1, 100, &count))) {
        return err;
    }
    peruser_config_set_processor_wait(wait, count);
    return NULL;
}

/* <Processor name> ... </Processor>: the block's own directives are read here from the
 * parsed tree, so that User and Group inside it never reach mod_unixd. */
static const char *processor_section(cmd_parms *cmd, void *dummy, const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    const char *endp, *user = NULL, *group = NULL;
    const ap_directive_t *d;
    char *name, *args;
    /* MinProcessors, MaxProcessors, MinSpareProcessors, MaxSpareProcessors; -1: not given */
    static const char *const limit_names[4] = { "MinProcessors", "MaxProcessors",
                                                 "MinSpareProcessors", "MaxSpareProcessors" };
    int limits[4] = { -1, -1, -1, -1 }, i;
    const char *chroot_dir = NULL, *cgroups[PERUSER_MAX_CGROUPS];
    int cgroup_count = 0, nice = 0, has_nice = 0;
    char error[1024];

    if (err) {
        return err;
    }
    endp = ap_strrchr_c(arg, '>');
    if (!endp) {
        return "<Processor> directive missing closing '>'";
    }
    args = apr_pstrndup(cmd->temp_pool, arg, endp - arg);
    name = ap_getword_conf(cmd->pool, (const char **)&args);
    if (!*name || *args) {
        return "<Processor> takes exactly one name, as in <Processor alice>";
    }

    for (d = cmd->directive->first_child; d; d = d->next) {
        const char *rest = d->args;
        const char *value = ap_getword_conf(cmd->pool, &rest);
        if (!*value || *rest) {
            return apr_psprintf(cmd->pool, "%s inside <Processor %s> takes one argument "
                                "(line %d of %s)", d->directive, name, d->line_num, d->filename);
        }
        if (!strcasecmp(d->directive, "User")) {
            if (user) {
                return apr_psprintf(cmd->pool, "User is given twice in <Processor %s> (line %d of %s)",
                                    name, d->line_num, d->filename);
            }
            user = value;
        }
        else if (!strcasecmp(d->directive, "Group")) {
            if (group) {
                return apr_psprintf(cmd->pool, "Group is given twice in <Processor %s> (line %d of %s)",
                                    name, d->line_num, d->filename);
            }
            group = value;
        }
        else if (!strcasecmp(d->directive, "Chroot")) {
            if (chroot_dir) {
                return apr_psprintf(cmd->pool, "Chroot is given twice in <Processor %s> (line %d of %s)",
                                    name, d->line_num, d->filename);
            }
            chroot_dir = value;
        }
        else if (!strcasecmp(d->directive, "Cgroup")) {
            if (cgroup_count == PERUSER_MAX_CGROUPS) {
                return apr_psprintf(cmd->pool, "<Processor %s> names more than %d Cgroup directories "
                                    "(line %d of %s)", name, PERUSER_MAX_CGROUPS, d->line_num, d->filename);
            }
            cgroups[cgroup_count++] = value;
        }
        else if (!strcasecmp(d->directive, "NiceValue")) {
            const char *bad;
            if (has_nice) {
                return apr_psprintf(cmd->pool, "NiceValue is given twice in <Processor %s> (line %d of %s)",
                                    name, d->line_num, d->filename);
            }
            if ((bad = parse_count(cmd, "NiceValue", value, -20, 19, &nice))) {
                return apr_psprintf(cmd->pool, "%s (line %d of %s)", bad, d->line_num, d->filename);
            }
            has_nice = 1;
        }
        else {
            for (i = 0; i < 4; i++) {
                if (!strcasecmp(d->directive, limit_names[i])) {
                    const char *bad = parse_count(cmd, limit_names[i], value, i == 1 ? 1 : 0,
                                                  MOST_SERVER_LIMIT, &limits[i]);
                    if (bad) {
                        return apr_psprintf(cmd->pool, "%s (line %d of %s)", bad, d->line_num, d->filename);
                    }
                    break;
                }
            }
            if (i == 4) {
                return apr_psprintf(cmd->pool, "%s is not allowed inside <Processor %s> (line %d of %s); "
                                    "allowed are User, Group, MinProcessors, MaxProcessors, "
                                    "MinSpareProcessors, MaxSpareProcessors, Chroot, Cgroup and NiceValue",
                                    d->directive, name, d->line_num, d->filename);
            }
        }
    }

    if (peruser_config_add_environment(name, user, group, limits[0], limits[1], limits[2], limits[3],
                                       chroot_dir, cgroups, cgroup_count, nice, has_nice,
                                       error, sizeof error) < 0) {
        return apr_psprintf(cmd->pool, "<Processor %s> (line %d of %s): %s", name,
                            cmd->directive->line_num, cmd->directive->filename, error);
    }
    return NULL;
}

/* ServerEnvironment and AssignUserID: in a <VirtualHost>, or in the server config for the main
 * server (and, by the usual merge, every vhost that names none); one of them, once. The
 * server's configuration, or NULL with the reason in *err. */
static peruser_server_conf *server_environment_conf(cmd_parms *cmd, const char *twice, const char **err)
{
    peruser_server_conf *conf = ap_get_module_config(cmd->server->module_config, &mpm_peruser_module);

    if ((*err = ap_check_cmd_context(cmd, NOT_IN_DIR_CONTEXT))) {
        return NULL;
    }
    if (conf->environment >= 0) {
        *err = twice;
        return NULL;
    }
    return conf;
}

static const char *set_server_environment(cmd_parms *cmd, void *dummy, const char *name)
{
    const char *err;
    peruser_server_conf *conf = server_environment_conf(cmd,
        cmd->server->is_virtual ? "ServerEnvironment is given twice for this virtual host (or after AssignUserID)"
                                : "ServerEnvironment is given twice for the main server (or after AssignUserID)", &err);
    char error[512];

    if (!conf) {
        return err;
    }
    conf->environment = peruser_config_find_environment(name, error, sizeof error);
    if (conf->environment < 0) {
        return apr_psprintf(cmd->pool, "ServerEnvironment %s: %s", name, error);
    }
    return NULL;
}

static const char *set_handback(cmd_parms *cmd, void *dummy, int on)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    if (err) {
        return err;
    }
    handback_enabled = on;
    return NULL;
}

static const char *set_multiplexer_chroot(cmd_parms *cmd, void *dummy, const char *path)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    char error[1024];
    if (err) {
        return err;
    }
    if (peruser_config_set_multiplexer_chroot(path, error, sizeof error) != 0) {
        return apr_pstrdup(cmd->pool, error);
    }
    return NULL;
}

/* Resolves a user or group name (or #id) to its id: 0, or -1 if there is no such account. */
static int account_id(const char *name, int is_group, unsigned *id)
{
    if (name[0] == '#') {
        char *end;
        unsigned long value = strtoul(name + 1, &end, 10);
        if (!name[1] || *end || value > UINT_MAX - 1) {
            return -1;
        }
        *id = (unsigned)value;
        return 0;
    }
    if (is_group) {
        struct group *g = getgrnam(name);
        if (!g) {
            return -1;
        }
        *id = g->gr_gid;
    }
    else {
        struct passwd *u = getpwnam(name);
        if (!u) {
            return -1;
        }
        *id = u->pw_uid;
    }
    return 0;
}

static const char *set_multiplexer_identity(cmd_parms *cmd, void *dummy, const char *name)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    int is_group = cmd->info != NULL;
    unsigned id;
    if (err) {
        return err;
    }
    if (account_id(name, is_group, &id) != 0) {
        return apr_psprintf(cmd->pool, "%s %s: no such %s on this system%s", cmd->cmd->name, name,
                            is_group ? "group" : "user",
                            " (the Debian package creates peruser-mux; elsewhere: "
                            "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin peruser-mux)");
    }
    if (id == 0) {
        return apr_psprintf(cmd->pool, "%s %s: the multiplexers must not run as root", cmd->cmd->name, name);
    }
    if (is_group) {
        mux_identity.group = apr_pstrdup(cmd->pool, name);
        mux_identity.gid = (gid_t)id;
        mux_identity.group_line = cmd->directive;
    }
    else {
        mux_identity.user = apr_pstrdup(cmd->pool, name);
        mux_identity.uid = (uid_t)id;
        mux_identity.user_line = cmd->directive;
    }
    return NULL;
}

/* mpm-itk's AssignUserID user group, inside <VirtualHost>: an implicit environment per pair. */
static const char *set_assign_user_id(cmd_parms *cmd, void *dummy, const char *user, const char *group)
{
    const char *err;
    peruser_server_conf *conf = server_environment_conf(cmd,
        "AssignUserID and ServerEnvironment (or a second AssignUserID) are both given for this "
        "server; keep one", &err);
    char error[512];

    if (!conf) {
        return err;
    }
    conf->environment = peruser_config_assign_user_id(user, group, error, sizeof error);
    if (conf->environment < 0) {
        return apr_pstrdup(cmd->pool, error);
    }
    return NULL;
}

/* mpm-itk directives that have no meaning here: refused with what to use instead. */
static const char *itk_unsupported(cmd_parms *cmd, void *dummy, const char *args)
{
    return apr_psprintf(cmd->pool, "%s (mpm-itk) is not supported by peruser: %s", cmd->cmd->name,
                        (const char *)cmd->info);
}

/* mpm-itk's LimitUIDRange/LimitGIDRange bound the ids its children may switch to at run time;
 * peruser's workers never switch after they start, so the bound holds by construction. */
static const char *itk_not_needed(cmd_parms *cmd, void *dummy, const char *args)
{
    ap_log_error(APLOG_MARK, APLOG_NOTICE | APLOG_STARTUP, 0, NULL,
                 "peruser: %s (line %d of %s) has no effect: workers never change their uid or gid "
                 "after they start", cmd->cmd->name, cmd->directive->line_num, cmd->directive->filename);
    return NULL;
}

static const char *stray_processor_directive(cmd_parms *cmd, void *dummy, const char *arg)
{
    return apr_psprintf(cmd->pool, "%s without matching <Processor> section", cmd->cmd->name);
}

static const command_rec peruser_cmds[] = {
    LISTEN_COMMANDS,
#define PERUSER_LIMIT(name, low, help) \
    AP_INIT_TAKE1(name, set_global_limit, (void *)(intptr_t)(low), RSRC_CONF, help)
    PERUSER_LIMIT("ServerLimit", 1, "Child slots: the hard limit of MaxClients (default 256)"),
    PERUSER_LIMIT("MaxClients", 1, "Most children alive at once (default 256)"),
    PERUSER_LIMIT("MaxRequestWorkers", 1, "httpd 2.4's name for MaxClients"),
    PERUSER_LIMIT("MinProcessors", 0, "Workers kept per environment (default 0)"),
    PERUSER_LIMIT("MaxProcessors", 1, "Most workers per environment (default 10)"),
    PERUSER_LIMIT("MinSpareProcessors", 0, "Idle workers kept per environment in use (default 2)"),
    PERUSER_LIMIT("MaxSpareProcessors", 0, "Most idle workers per environment; 0: no limit (default 0)"),
    PERUSER_LIMIT("MinMultiplexers", 1, "Multiplexers kept (default 3)"),
    PERUSER_LIMIT("MaxMultiplexers", 1, "Most multiplexers (default 10)"),
    PERUSER_LIMIT("MultiplexerIdleTimeout", 0, "Seconds before an idle extra multiplexer exits; 0: never"),
    PERUSER_LIMIT("ExpireTimeout", 0, "Seconds a worker may spend on one request; 0: no limit (default 1800)"),
    PERUSER_LIMIT("IdleTimeout", 0, "Seconds before an idle spare worker exits; 0: never (default 900)"),
    PERUSER_LIMIT("MultiplexerHeadTimeout", 1, "Seconds a multiplexer waits for a complete request head (default 5)"),
    PERUSER_LIMIT("MultiplexerMaxConnections", 1, "Connections one multiplexer holds at most (default 512)"),
    AP_INIT_TAKE12("ProcessorWaitTimeout", set_processor_wait, NULL, RSRC_CONF,
                   "Seconds a connection waits for a busy environment, and the availability levels"),
    AP_INIT_RAW_ARGS("<Processor", processor_section, NULL, RSRC_CONF,
                     "Declares a server environment: <Processor name> User u, Group g </Processor>"),
    AP_INIT_RAW_ARGS("</Processor>", stray_processor_directive, NULL, RSRC_CONF,
                     "Ends a <Processor> section"),
    AP_INIT_TAKE2("AssignUserID", set_assign_user_id, NULL, RSRC_CONF,
                  "mpm-itk's: the user and group this virtual host is served as (an implicit environment)"),
    AP_INIT_RAW_ARGS("AssignUserIDExpr", itk_unsupported,
                     "identities chosen per request would need a worker per request; give each site a "
                     "<Processor> and a ServerEnvironment", RSRC_CONF | ACCESS_CONF, "not supported"),
    AP_INIT_RAW_ARGS("AssignGroupIDExpr", itk_unsupported,
                     "identities chosen per request would need a worker per request; give each site a "
                     "<Processor> and a ServerEnvironment", RSRC_CONF | ACCESS_CONF, "not supported"),
    AP_INIT_RAW_ARGS("MaxClientsVHost", itk_unsupported,
                     "limit workers per environment with MaxProcessors inside <Processor> (or globally)",
                     RSRC_CONF, "not supported"),
    AP_INIT_RAW_ARGS("NiceValue", itk_unsupported,
                     "NiceValue belongs inside <Processor>, where it applies to that environment's workers",
                     RSRC_CONF, "not supported here"),
    AP_INIT_RAW_ARGS("LimitUIDRange", itk_not_needed, NULL, RSRC_CONF, "accepted; no effect"),
    AP_INIT_RAW_ARGS("LimitGIDRange", itk_not_needed, NULL, RSRC_CONF, "accepted; no effect"),
    AP_INIT_FLAG("PeruserHandBack", set_handback, NULL, RSRC_CONF,
                 "On (default): a kept-alive connection moves to the environment of its next request; "
                 "Off: such a request gets 421 and the connection closes"),
    AP_INIT_TAKE1("MultiplexerUser", set_multiplexer_identity, NULL, RSRC_CONF,
                  "The user the multiplexers run as (default: User); never a tenant's"),
    AP_INIT_TAKE1("MultiplexerGroup", set_multiplexer_identity, (void *)1, RSRC_CONF,
                  "The group the multiplexers run as (default: Group); never a tenant's"),
    AP_INIT_TAKE1("MultiplexerChroot", set_multiplexer_chroot, NULL, RSRC_CONF,
                  "A root-owned directory the multiplexers chroot into before they drop privileges"),
    AP_INIT_TAKE1("ServerEnvironment", set_server_environment, NULL, RSRC_CONF,
                  "The server environment (<Processor> name) that serves this virtual host"),
    AP_GRACEFUL_SHUTDOWN_TIMEOUT_COMMAND,
    { NULL }
};

/* ===================================================================== */
/* Worker: hand-back of a kept-alive connection                           */
/* ===================================================================== */

/* Keeps a copy of the raw bytes of the request head being read, so that a request for
 * another environment can be given back exactly as the client sent it. */
static apr_status_t record_filter(ap_filter_t *f, apr_bucket_brigade *bb, ap_input_mode_t mode,
                                  apr_read_type_e block, apr_off_t readbytes)
{
    head_record *record = f->ctx;
    apr_status_t rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
    apr_bucket *b;

    if (rv != APR_SUCCESS || !record->recording || mode == AP_MODE_SPECULATIVE) {
        return rv;
    }
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t len;
        if (APR_BUCKET_IS_METADATA(b)) {
            continue;
        }
        if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS) {
            record->overflow = 1;
            continue;
        }
        if (record->len + len > HEAD_RECORD_MAX) {
            record->overflow = 1;
            continue;
        }
        memcpy(record->buf + record->len, data, len);
        record->len += len;
    }
    return rv;
}

static int worker_pre_connection(conn_rec *c, void *csd)
{
    head_record *record;
    if (!is_worker || c->master) {
        return DECLINED;
    }
    record = apr_pcalloc(c->pool, sizeof *record);
    record->buf = apr_palloc(c->pool, PERUSER_MESSAGE_MAX);
    record->filter = ap_add_input_filter_handle(record_filter_handle, record, NULL, c);
    current.record = record;
    return DECLINED;
}

static void worker_pre_read_request(request_rec *r, conn_rec *c)
{
    if (is_worker && current.record && !c->master) {
        current.record->recording = 1;
        current.record->overflow = 0;
        current.record->len = 0;
    }
}

/* Gives the connection back to the multiplexers: the head read so far, whatever the core
 * input filter has buffered, and what the socket holds right now travel with the fd. */
static int hand_back(request_rec *r)
{
    conn_rec *c = r->connection;
    head_record *record = current.record;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, c->bucket_alloc);
    static unsigned char message[PERUSER_MESSAGE_MAX];
    apr_size_t room = PERUSER_MESSAGE_MAX - PERUSER_MESSAGE_HEADER;
    long length;
    int hops = current.requests_served > 0 ? 1 : current.received_hops + 1;
    int rv, tries;

    /* Socket reads are paused, so this drains exactly what the input filters buffered past
     * the head; the rest stays in the socket for the next worker to read. */
    current.socket_reads_paused = 1;
    for (;;) {
        apr_bucket *b;
        if (record->len >= room) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          "peruser: more buffered input than a hand-back carries; refused");
            c->keepalive = AP_CONN_CLOSE;
            return HTTP_MISDIRECTED_REQUEST;
        }
        if (ap_get_brigade(record->filter->next, bb, AP_MODE_READBYTES, APR_NONBLOCK_READ,
                           room - record->len) != APR_SUCCESS || APR_BRIGADE_EMPTY(bb)) {
            break;
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
            const char *data;
            apr_size_t len;
            if (APR_BUCKET_IS_METADATA(b)
                || apr_bucket_read(b, &data, &len, APR_NONBLOCK_READ) != APR_SUCCESS) {
                continue;
            }
            if (len > room - record->len) {
                len = room - record->len; /* cannot happen: we asked for at most this much */
            }
            memcpy(record->buf + record->len, data, len);
            record->len += len;
        }
        apr_brigade_cleanup(bb);
    }

    /* Earlier responses on this connection may still sit in the core output filter (it holds
     * small responses back while pipelined requests wait): write them before anyone else can
     * answer on this socket, so the client gets its answers in order. */
    {
        apr_bucket_brigade *fb = apr_brigade_create(r->pool, c->bucket_alloc);
        APR_BRIGADE_INSERT_TAIL(fb, apr_bucket_flush_create(c->bucket_alloc));
        if (ap_pass_brigade(c->output_filters, fb) != APR_SUCCESS || c->aborted) {
            ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                          "peruser: client went away before the hand-back");
            c->keepalive = AP_CONN_CLOSE;
            c->aborted = 1;
            apr_table_setn(r->notes, "peruser-handed-back", "1");
            return DONE;
        }
    }

    length = peruser_message_encode(message, sizeof message, hops, current.ticket, record->buf, record->len);
    if (length < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "peruser: cannot encode hand-back");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    /* The multiplexers drain this channel in their event loops; a full one is brief. */
    for (tries = 0; tries < 100; tries++) {
        rv = peruser_shim_send_fd(channels[CHANNEL(my_environment, HANDBACK_SEND)], current.fd, message,
                                  (size_t)length);
        if (rv != -EAGAIN) {
            break;
        }
        poll(NULL, 0, 10);
    }
    if (rv != 0) {
        /* Only this environment's channel can be broken (one of its own workers shut it
         * down, say): 421 and a close send the client to a new connection, which the
         * multiplexers route as usual. */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, -rv, r,
                      "peruser: could not hand the connection back to a multiplexer; answered 421");
        c->keepalive = AP_CONN_CLOSE;
        return HTTP_MISDIRECTED_REQUEST;
    }
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                  "peruser: handed connection back (%lu bytes consumed) for %s",
                  (unsigned long)record->len, vhost_description(r->pool, r->server));
    /* Nothing more may be read from or written to this socket here: the client's next
     * answer comes from another worker. Closing our fd does not close the connection. */
    current.handed_back = 1;
    apr_table_setn(r->notes, "peruser-handed-back", "1");
    c->keepalive = AP_CONN_CLOSE;
    c->aborted = 1;
    return DONE;
}

/* Whether this worker may run request `r`: its vhost belongs to the worker's environment. */
static int request_is_ours(const request_rec *r)
{
    return server_environment(r->server) == my_environment;
}

/* 421 Misdirected Request (RFC 9110 15.5.20): the client retries on a new connection, which
 * the multiplexers route to the right environment. Logged at info: any client can cause it. */
static int misdirected(request_rec *r, const char *where)
{
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  "peruser: %s for %s, which environment %d does not serve; answered 421",
                  where, vhost_description(r->pool, r->server), my_environment);
    return HTTP_MISDIRECTED_REQUEST;
}

static int worker_post_read_request(request_rec *r)
{
    if (!is_worker) {
        return DECLINED;
    }
    /* HTTP/2 streams (secondary connections, c->master set), subrequests and internal
     * redirects cannot move to another process: another environment's vhost gets 421. */
    if (r->connection->master || r->main || r->prev || !current.record) {
        return request_is_ours(r) ? DECLINED : misdirected(r, r->connection->master ? "HTTP/2 stream" : "request");
    }
    current.record->recording = 0;
    if (request_is_ours(r)) {
        current.requests_served++;
        peruser_worker_started_request(my_slot, my_environment, r->the_request,
                                       r->server->server_hostname);
        return DECLINED;
    }
    if (ap_ssl_conn_is_ssl(r->connection)) {
        /* A TLS session cannot move to another process. */
        return HTTP_MISDIRECTED_REQUEST;
    }
    if (current.record->overflow) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "peruser: request head too large to hand to another environment");
        return HTTP_MISDIRECTED_REQUEST;
    }
    if (!handback_enabled) {
        /* The client opens a new connection, which the multiplexers route; this worker never
         * holds a connection that later carries another tenant's requests. */
        r->connection->keepalive = AP_CONN_CLOSE;
        return misdirected(r, "request (PeruserHandBack Off)");
    }
    return hand_back(r);
}

/* The same check wherever a request can start running without post_read_request: internal
 * redirects (ErrorDocument, mod_rewrite), subrequests, and, as the last gate before any
 * content, every handler (CGI, PHP, files). Only what passes these runs in this worker. */
static int worker_gate_quick_handler(request_rec *r, int lookup)
{
    return (!is_worker || request_is_ours(r)) ? DECLINED : misdirected(r, "internal request");
}

static int worker_gate_translate(request_rec *r)
{
    return (!is_worker || request_is_ours(r)) ? DECLINED : misdirected(r, "request");
}

static int worker_gate_handler(request_rec *r)
{
    return (!is_worker || request_is_ours(r)) ? DECLINED : misdirected(r, "handler");
}

/* A handed-back request is logged by the worker that serves it, not here. */
static int worker_log_transaction(request_rec *r)
{
    return (is_worker && apr_table_get(r->notes, "peruser-handed-back")) ? DONE : DECLINED;
}

/* The worker's socket bucket: apr's socket bucket, except that its reads can be paused
 * (they then report "no data yet"), so a hand-back takes what httpd's filters buffered and
 * leaves the rest in the socket. */
static apr_status_t handoff_socket_read(apr_bucket *a, const char **str, apr_size_t *len,
                                        apr_read_type_e block);

static const apr_bucket_type_t handoff_socket_type = {
    "PERUSER_SOCKET", 5, APR_BUCKET_DATA,
    apr_bucket_destroy_noop,
    handoff_socket_read,
    apr_bucket_setaside_notimpl,
    apr_bucket_split_notimpl,
    apr_bucket_copy_notimpl
};

static apr_bucket *handoff_socket_create(apr_socket_t *sock, apr_bucket_alloc_t *list)
{
    apr_bucket *b = apr_bucket_alloc(sizeof(*b), list);
    APR_BUCKET_INIT(b);
    b->free = apr_bucket_free;
    b->list = list;
    b->type = &handoff_socket_type;
    b->length = (apr_size_t)(-1);
    b->start = -1;
    b->data = sock;
    return b;
}

static apr_status_t handoff_socket_read(apr_bucket *a, const char **str, apr_size_t *len,
                                        apr_read_type_e block)
{
    apr_socket_t *sock = a->data;
    apr_interval_time_t timeout = 0;
    apr_status_t rv;
    char *buf;

    *str = NULL;
    *len = 0;
    if (current.socket_reads_paused) {
        return APR_EAGAIN;
    }
    if (block == APR_NONBLOCK_READ) {
        apr_socket_timeout_get(sock, &timeout);
        apr_socket_timeout_set(sock, 0);
    }
    *len = APR_BUCKET_BUFF_SIZE;
    buf = apr_bucket_alloc(*len, a->list);
    rv = apr_socket_recv(sock, buf, len);
    if (block == APR_NONBLOCK_READ) {
        apr_socket_timeout_set(sock, timeout);
    }
    if (rv != APR_SUCCESS && rv != APR_EOF) {
        apr_bucket_free(buf);
        *len = 0;
        return rv;
    }
    if (*len > 0) {
        /* This bucket becomes the data; a fresh socket bucket follows it. */
        apr_bucket_heap *h;
        a = apr_bucket_heap_make(a, buf, *len, apr_bucket_free);
        h = a->data;
        h->alloc_len = APR_BUCKET_BUFF_SIZE;
        *str = buf;
        APR_BUCKET_INSERT_AFTER(a, handoff_socket_create(sock, a->list));
    }
    else {
        /* End of stream: an empty bucket, as apr's socket bucket does. */
        apr_bucket_free(buf);
        a = apr_bucket_immortal_make(a, "", 0);
        *str = a->data;
    }
    return APR_SUCCESS;
}

/* Seeds the core input filter of a worker's connection: bytes a multiplexer or another
 * worker already consumed, then the socket. */
static apr_status_t worker_insert_network_bucket(conn_rec *c, apr_bucket_brigade *bb,
                                                 apr_socket_t *socket)
{
    if (!is_worker || socket != current.socket) {
        return AP_DECLINED;
    }
    if (current.pending_len > 0) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create((const char *)current.pending,
                                                           current.pending_len, NULL,
                                                           c->bucket_alloc));
        current.pending_len = 0;
    }
    APR_BRIGADE_INSERT_TAIL(bb, handoff_socket_create(socket, c->bucket_alloc));
    return APR_SUCCESS;
}

/* ===================================================================== */
/* Children                                                               */
/* ===================================================================== */

static void install_handler(int sig, void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = handler;
    sigaction(sig, &sa, NULL);
}

/* Httpd's keep-alive loop ends a connection after the current request once the MPM state
 * says STOPPING (ap_graceful_stop_signalled). */
static void on_retire(int sig)
{
    retire_requested = 1;
    retained->mpm->mpm_state = AP_MPMQ_STOPPING;
}

static void on_drain(int sig)
{
    drain_requested = 1;
    retained->mpm->mpm_state = AP_MPMQ_STOPPING;
}

int peruser_shim_stop_requested(void)
{
    return retire_requested || drain_requested;
}

static void clean_child_exit(int code)
{
    if (my_slot >= 0) {
        peruser_child_set_status(my_slot, PERUSER_STATUS_STANDBY);
    }
    if (pchild) {
        apr_pool_destroy(pchild); /* runs the modules' child cleanups */
    }
    exit(code);
}

static void child_common_setup(void)
{
    apr_allocator_t *allocator;
#if AP_HAS_THREAD_LOCAL
    apr_thread_t *thd = NULL;
#endif

    retained->mpm->mpm_state = AP_MPMQ_STARTING;
    apr_signal(SIGHUP, SIG_DFL);
    apr_signal(SIGTERM, SIG_DFL);
    apr_signal(SIGCHLD, SIG_DFL);
    apr_signal(SIGINT, SIG_IGN);
    /* No SA_RESTART: a worker blocked on its channel must wake up to these. */
    install_handler(AP_SIG_GRACEFUL, on_retire);
    install_handler(AP_SIG_GRACEFUL_STOP, on_drain);
    ap_fatal_signal_child_setup(ap_server_conf);

    apr_allocator_create(&allocator);
    apr_allocator_max_free_set(allocator, ap_max_mem_free);
    apr_pool_create_ex(&pchild, pconf, NULL, allocator);
    apr_allocator_owner_set(allocator, pchild);
    apr_pool_tag(pchild, "pchild");
#if AP_HAS_THREAD_LOCAL
    if (ap_thread_main_create(&thd, pchild) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf,
                     "peruser: could not initialize the child's main thread");
        exit(APEXIT_CHILDFATAL);
    }
#endif
}

/* Children must not outlive a parent that dies without stopping them. Called after the
 * privilege change, which clears the parent-death signal. */
static void die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    if (getppid() != parent) {
        exit(0); /* the parent died before the signal was armed */
    }
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Drops to the environment's user and group for good, and proves it. */
static int drop_to_environment(int environment)
{
    unsigned uid, gid;
    char user[256], name[256], jail[PATH_MAX];
    int nice;
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    int rc;

    if (peruser_config_environment_identity(environment, &uid, &gid, user, sizeof user) != 0
        || peruser_config_environment_name(environment, name, sizeof name) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf,
                     "peruser: worker started for unknown environment %d", environment);
        return -1;
    }
    if (uid == 0 || gid == 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf,
                     "peruser: environment %s resolves to root; refusing to serve", name);
        return -1;
    }
    rc = peruser_config_environment_nice(environment, &nice);
    if (rc == 1 && setpriority(PRIO_PROCESS, 0, nice) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                     "peruser: worker for environment %s could not set NiceValue %d", name, nice);
        return -1;
    }
    /* Groups come from the host's /etc/group, so they are set before the chroot. */
    rc = (user[0] == '#') ? setgroups(1, (gid_t *)&gid) : initgroups(user, (gid_t)gid);
    if (rc != 0 || setgid((gid_t)gid) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                     "peruser: worker for environment %s could not switch to gid %u", name, gid);
        return -1;
    }
    rc = peruser_config_environment_chroot(environment, jail, sizeof jail);
    if (rc < 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf,
                     "peruser: worker for environment %s cannot read its Chroot", name);
        return -1;
    }
    if (rc == 1) {
        tzset(); /* the jail may have no /etc/localtime; keep the host's time zone in logs */
        if (chdir(jail) != 0 || chroot(jail) != 0 || chdir("/") != 0) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                         "peruser: worker for environment %s could not chroot to %s", name, jail);
            return -1;
        }
    }
    if (setuid((uid_t)uid) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                     "peruser: worker for environment %s could not switch to uid %u", name, uid);
        return -1;
    }
    if (getresuid(&ruid, &euid, &suid) != 0 || getresgid(&rgid, &egid, &sgid) != 0
        || ruid != uid || euid != uid || suid != uid || rgid != gid || egid != gid || sgid != gid
        || setuid(0) == 0 || setgid(0) == 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf,
                     "peruser: worker for environment %s still holds other ids after the "
                     "switch to uid %u gid %u; exiting", name, uid, gid);
        return -1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                     "peruser: worker for environment %s: PR_SET_NO_NEW_PRIVS failed", name);
        return -1;
    }
    return 0;
}

/* Builds the connection from the socket alone: addresses come from the kernel, never from
 * the message, so a tenant cannot forge the client address another tenant's vhost sees. */
static void serve_connection(apr_pool_t *ptrans, ap_sb_handle_t *sbh, apr_bucket_alloc_t *ba,
                             int fd, const unsigned char *consumed, apr_size_t consumed_len,
                             int hops, uint64_t ticket, long conn_id)
{
    struct sockaddr_storage local, remote;
    socklen_t local_len = sizeof local, remote_len = sizeof remote;
    int type = 0, flags;
    socklen_t type_len = sizeof type;
    apr_os_sock_info_t info;
    apr_socket_t *csd = NULL;
    conn_rec *c;

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM
        || getsockname(fd, (struct sockaddr *)&local, &local_len) != 0
        || getpeername(fd, (struct sockaddr *)&remote, &remote_len) != 0
        || (local.ss_family != AF_INET && local.ss_family != AF_INET6)) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, ap_server_conf,
                     "peruser: received an fd that is not a connected TCP socket; dropped");
        close(fd);
        return;
    }
    /* apr takes the socket for a blocking one. A connection handed back from a worker may
     * still carry the O_NONBLOCK its apr set. */
    flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_NONBLOCK)) {
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    }

    memset(&info, 0, sizeof info);
    info.os_sock = &fd;
    info.local = (struct sockaddr *)&local;
    info.remote = (struct sockaddr *)&remote;
    info.family = local.ss_family;
    info.type = SOCK_STREAM;
    info.protocol = IPPROTO_TCP;
    if (apr_os_sock_make(&csd, &info, ptrans) != APR_SUCCESS) {
        close(fd);
        return;
    }

    memset(&current, 0, sizeof current);
    current.socket = csd;
    current.fd = fd;
    current.pending = consumed;
    current.pending_len = consumed_len;
    current.received_hops = hops;
    current.ticket = ticket;

    c = ap_run_create_connection(ptrans, ap_server_conf, csd, conn_id, sbh, ba);
    if (c) {
        ap_process_connection(c, csd);
        if (!current.handed_back) {
            ap_lingering_close(c);
        }
    }
    memset(&current, 0, sizeof current);
}

/* Replaces the worker's writable mapping of this generation's table by a read-only one (from
 * a read-only descriptor, so mprotect cannot make it writable again) with only its own slot's
 * page and its environment's page writable; drops every other table mapping and descriptor.
 * The addresses stay the same, so the Swift view of the table stays valid. */
static int confine_table_view(int slot, int environment)
{
    char path[64];
    size_t slot_page, environment_page, page = peruser_table_page_size();
    unsigned char *base = retained->table;
    int ro;

    if (retained->previous_table) {
        munmap(retained->previous_table, retained->previous_table_size);
        retained->previous_table = NULL;
    }
    if (!base || retained->table_fd < 0
        || peruser_table_worker_pages(slot, environment, &slot_page, &environment_page) != 0) {
        return -1;
    }
    apr_snprintf(path, sizeof path, "/proc/self/fd/%d", retained->table_fd);
    ro = open(path, O_RDONLY | O_CLOEXEC);
    if (ro < 0) {
        return -1;
    }
    if (mmap(base, retained->table_size, PROT_READ, MAP_SHARED | MAP_FIXED, ro, 0) == MAP_FAILED
        || mmap(base + slot_page, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                retained->table_fd, (off_t)slot_page) == MAP_FAILED
        || mmap(base + environment_page, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                retained->table_fd, (off_t)environment_page) == MAP_FAILED) {
        close(ro);
        return -1;
    }
    close(ro);
    close_fd(&retained->table_fd);
    return 0;
}

/* A child keeps no parent end of any multiplexer's control channel. */
static void close_control_ends(void)
{
    int i;
    for (i = 0; retained->control && i < MOST_SERVER_LIMIT; i++) {
        close_fd(&retained->control[i]);
    }
}

static void worker_main(int environment)
{
    static unsigned char message[PERUSER_MESSAGE_MAX];
    apr_pool_t *ptrans;
    ap_sb_handle_t *sbh;
    apr_bucket_alloc_t *bucket_alloc;
    long conn_id = 0;
    int e, channel;

    child_common_setup();
    is_worker = 1;
    my_environment = environment;

    /* A worker holds no listener, no other environment's channel, no demand pipe, and no
     * view of the multiplexers' state. */
    if (retained->mux_state) {
        munmap(retained->mux_state, retained->mux_state_size);
        retained->mux_state = NULL;
        peruser_multiplexer_state_attach(NULL, 0);
    }
    if (retained->mux_secret) {
        munmap(retained->mux_secret, (size_t)getpagesize());
        retained->mux_secret = NULL;
    }
    ap_close_listeners();
    for (e = 0; e < channel_env_count; e++) {
        int end;
        for (end = 0; end < CHANNEL_ENDS; end++) {
            if (e != environment || end == HANDOFF_SEND || end == HANDBACK_RECEIVE) {
                close_fd(&channels[CHANNEL(e, end)]);
            }
        }
    }
    for (e = 0; e < retained->previous_handback_count; e++) {
        close_fd(&retained->previous_handback[e]);
    }
    close_control_ends();
    close_fd(&retained->demand[0]);
    close_fd(&retained->demand[1]);
    channel = channels[CHANNEL(environment, HANDOFF_RECEIVE)];
    if (confine_table_view(my_slot, environment) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                     "peruser: worker could not map its read-only view of the child table");
        clean_child_exit(APEXIT_CHILDSICK);
    }

    ap_reopen_scoreboard(pchild, NULL, 0);
    if (drop_to_environment(environment) != 0) {
        clean_child_exit(APEXIT_CHILDSICK);
    }
    die_with_parent(parent_pid);
    /* SCHED_BATCH: a worker woken by a hand-off does not preempt the multiplexer that is
     * still accepting, so a burst is spread over workers instead of ping-ponging; measured
     * +8% req/s and a quarter of the p99 for 1 KiB Connection: close (BENCHMARKS.md). */
    {
        struct sched_param batch = { 0 };
        if (sched_setscheduler(0, SCHED_BATCH, &batch) != 0) {
            ap_log_error(APLOG_MARK, APLOG_DEBUG, errno, ap_server_conf, "peruser: SCHED_BATCH refused");
        }
    }
    ap_run_child_init(pchild, ap_server_conf);
    ap_create_sb_handle(&sbh, pchild, my_slot, 0);
    bucket_alloc = apr_bucket_alloc_create(pchild);
    apr_pool_create(&ptrans, pchild);
    apr_pool_tag(ptrans, "transaction");
    retained->mpm->mpm_state = AP_MPMQ_RUNNING;

    for (;;) {
        int fd = -1, hops = 0;
        uint64_t ticket = 0;
        ssize_t n;
        long consumed;

        /* Retired, recycled (MaxConnectionsPerChild), or told to drain: never in the
         * middle of a connection. */
        if (retire_requested
            || (ap_max_requests_per_child > 0 && conn_id >= ap_max_requests_per_child)) {
            clean_child_exit(0);
        }
        ap_update_child_status(sbh, SERVER_READY, NULL);
        peruser_child_set_status(my_slot, PERUSER_STATUS_READY);
        n = peruser_shim_recv_fd(channel, message, sizeof message, drain_requested, &fd);
        if (n == 0 || n == -EAGAIN || n == -EWOULDBLOCK) {
            /* Drained, or every writer of this generation's channel is gone. */
            clean_child_exit(0);
        }
        if (n == -EINTR) {
            continue;
        }
        if (n == -EBADMSG) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, ap_server_conf,
                         "peruser: worker dropped an invalid message on its channel");
            continue;
        }
        if (n < 0) {
            ap_log_error(APLOG_MARK, APLOG_ERR, (apr_status_t)-n, ap_server_conf,
                         "peruser: worker lost its channel; exiting");
            clean_child_exit(APEXIT_CHILDSICK);
        }
        consumed = peruser_message_decode(message, (size_t)n, &hops, &ticket);
        if (consumed < 0) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, ap_server_conf,
                         "peruser: worker dropped an invalid hand-off message (%ld bytes)", (long)n);
            close(fd);
            continue;
        }
        peruser_worker_took_connection(my_slot, my_environment);
        apr_pool_clear(ptrans);
        serve_connection(ptrans, sbh, bucket_alloc, fd, message + PERUSER_MESSAGE_HEADER,
                         (apr_size_t)consumed, hops, ticket, conn_id++);
    }
}

static void multiplexer_main(void)
{
    static char mux_jail[PATH_MAX];
    ap_listen_rec *lr;
    int *listeners, count = 0, e, rc;

    child_common_setup();
    for (e = 0; e < channel_env_count; e++) {
        close_fd(&channels[CHANNEL(e, HANDOFF_RECEIVE)]);
        close_fd(&channels[CHANNEL(e, HANDBACK_SEND)]);
    }
    close_fd(&retained->demand[0]);
    close_fd(&retained->table_fd);
    close_control_ends();

    ap_reopen_scoreboard(pchild, NULL, 0);
    /* MultiplexerChroot: mod_unixd's drop_privileges sets the groups, chroots, then sets the
     * user, in that order; this child's copy of its ChrootDir (refused in the configuration,
     * see peruser_check_config) carries ours. */
    if (peruser_config_multiplexer_chroot(mux_jail, sizeof mux_jail) == 1) {
        tzset();
        ap_unixd_config.chroot_dir = mux_jail;
    }
    if (mux_identity.user) {
        ap_unixd_config.user_name = mux_identity.user;
        ap_unixd_config.user_id = mux_identity.uid;
    }
    if (mux_identity.group) {
        ap_unixd_config.group_id = mux_identity.gid;
    }
    if (ap_run_drop_privileges(pchild, ap_server_conf)) {
        clean_child_exit(APEXIT_CHILDFATAL);
    }
    /* mod_unixd makes the process dumpable again when CoreDumpDirectory is set; a dumpable
     * multiplexer could be traced by any process of its uid. Never. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (getuid() == 0 || geteuid() == 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf,
                     "peruser: a multiplexer must not run as root; set User and Group");
        clean_child_exit(APEXIT_CHILDFATAL);
    }
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    die_with_parent(parent_pid);
    /* A multiplexer holds many connections at once: allow it as many fds as the system does. */
    {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    apr_pool_create(&route_pool, pchild);
    apr_pool_tag(route_pool, "route");

    for (lr = ap_listeners; lr; lr = lr->next) {
        count++;
    }
    listeners = apr_pcalloc(pchild, sizeof(int) * (count ? count : 1));
    count = 0;
    for (lr = ap_listeners; lr; lr = lr->next) {
        apr_os_sock_t fd;
        if (apr_os_sock_get(&fd, lr->sd) == APR_SUCCESS) {
            listeners[count++] = fd;
        }
    }
    {
        int n = channel_env_count ? channel_env_count : 1;
        int *handoffs = apr_pcalloc(pchild, sizeof(int) * n), *handbacks = apr_pcalloc(pchild, sizeof(int) * n);
        for (e = 0; e < channel_env_count; e++) {
            handoffs[e] = channels[CHANNEL(e, HANDOFF_SEND)];
            handbacks[e] = channels[CHANNEL(e, HANDBACK_RECEIVE)];
        }
        retained->mpm->mpm_state = AP_MPMQ_RUNNING;
        ap_update_child_status_from_indexes(my_slot, 0, SERVER_READY, NULL);
        rc = peruser_multiplexer_run(my_slot, listeners, count, handoffs, handbacks, channel_env_count,
                                     (unsigned)retained->mpm->my_generation, retained->previous_handback,
                                     retained->previous_handback_count, retained->previous_generation,
                                     retained->demand[1], retained->mux_secret, (size_t)getpagesize(),
                                     control_fd);
    }
    clean_child_exit(rc);
}

/* ===================================================================== */
/* Parent                                                                 */
/* ===================================================================== */

/* Ends this generation's channels. The receiving ends of its hand-back channels stay open one
 * generation more (the next generation's multiplexers read them); older ones are closed. */
static void close_channels(unsigned generation)
{
    int e;
    for (e = 0; e < retained->previous_handback_count; e++) {
        close_fd(&retained->previous_handback[e]);
    }
    free(retained->previous_handback);
    retained->previous_handback = NULL;
    retained->previous_handback_count = 0;
    if (channels && channel_env_count > 0
        && (retained->previous_handback = malloc(sizeof(int) * (size_t)channel_env_count))) {
        retained->previous_handback_count = channel_env_count;
        retained->previous_generation = generation;
        for (e = 0; e < channel_env_count; e++) {
            retained->previous_handback[e] = channels[CHANNEL(e, HANDBACK_RECEIVE)];
            channels[CHANNEL(e, HANDBACK_RECEIVE)] = -1;
        }
    }
    for (e = 0; channels && e < CHANNEL_ENDS * channel_env_count; e++) {
        close_fd(&channels[e]);
    }
    channels = NULL;
    channel_env_count = 0;
}

/* A one-way SOCK_SEQPACKET channel: the receiving end can never send, so neither side can
 * write where the other only reads. */
static int one_way_channel(int *send_end, int *receive_end)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        return -1;
    }
    shutdown(pair[1], SHUT_WR);
    *send_end = pair[0];
    *receive_end = pair[1];
    return 0;
}

static int open_channels(apr_pool_t *p)
{
    int e;
    channel_env_count = peruser_config_environment_count();
    channels = apr_pcalloc(p, sizeof(int) * CHANNEL_ENDS * (channel_env_count ? channel_env_count : 1));
    for (e = 0; e < CHANNEL_ENDS * channel_env_count; e++) {
        channels[e] = -1;
    }
    for (e = 0; e < channel_env_count; e++) {
        if (one_way_channel(&channels[CHANNEL(e, HANDOFF_SEND)], &channels[CHANNEL(e, HANDOFF_RECEIVE)]) != 0
            || one_way_channel(&channels[CHANNEL(e, HANDBACK_SEND)], &channels[CHANNEL(e, HANDBACK_RECEIVE)]) != 0) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                         "peruser: cannot create the channels of environment %d", e);
            return !OK;
        }
    }
    return OK;
}

static void *map_shared(const char *name, size_t size, int *keep_fd);

/* What outlives a generation: the demand pipe and the multiplexers' secret, created once. */
static int open_lasting_channels(void)
{
    if (retained->demand[0] < 0 && pipe2(retained->demand, O_CLOEXEC | O_NONBLOCK) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                     "peruser: cannot create the demand pipe");
        return !OK;
    }
    if (!retained->mux_secret) {
        void *secret = map_shared("peruser-multiplexer-secret", (size_t)getpagesize(), NULL);
        if (!secret) {
            return !OK;
        }
        if (getrandom(secret, 16, 0) != 16) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf,
                         "peruser: cannot draw the multiplexers' secret from getrandom");
            munmap(secret, (size_t)getpagesize());
            return !OK;
        }
        retained->mux_secret = secret;
    }
    return OK;
}

/* This generation's shared child table: a memfd mapping every child inherits. The one of
 * the previous generation stays mapped one generation more (its children may still run). */
/* A named shared mapping (a memfd, so it shows by name in /proc/PID/maps), or NULL (logged). */
static void *map_shared(const char *name, size_t size, int *keep_fd)
{
    void *p;
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf, "peruser: cannot create %s", name);
        if (fd >= 0) {
            close(fd);
        }
        return NULL;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (keep_fd && p != MAP_FAILED) {
        *keep_fd = fd;
    }
    else {
        close(fd);
    }
    if (p == MAP_FAILED) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, errno, ap_server_conf, "peruser: cannot map %s", name);
        return NULL;
    }
    return p;
}

static int map_child_table(int slots)
{
    size_t size = peruser_table_size(slots, peruser_config_environment_count());
    void *table;
    int fd = -1;

    if (peruser_table_page_size() % getpagesize() != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf,
                     "peruser: the page size of this system (%d bytes) does not divide the child "
                     "table's pages (%lu bytes); this build cannot confine workers here",
                     getpagesize(), (unsigned long)peruser_table_page_size());
        return !OK;
    }
    table = map_shared("peruser-child-table", size, &fd);
    if (!table) {
        return !OK;
    }
    close_fd(&retained->table_fd);
    retained->table_fd = fd;
    retained->table_slots = slots;
    if (retained->previous_table) {
        munmap(retained->previous_table, retained->previous_table_size);
    }
    retained->previous_table = retained->table;
    retained->previous_table_size = retained->table_size;
    retained->previous_table_environments = retained->table_environments;
    retained->table = table;
    retained->table_size = size;
    retained->table_environments = peruser_config_environment_count();

    /* The multiplexers' state of this generation. The old one stays with the old children
     * that inherited it; the parent has no further use for it. */
    if (retained->mux_state) {
        munmap(retained->mux_state, retained->mux_state_size);
    }
    retained->mux_state_size = peruser_multiplexer_state_size(peruser_config_environment_count());
    retained->mux_state = map_shared("peruser-multiplexer-state", retained->mux_state_size, NULL);
    if (!retained->mux_state) {
        return !OK;
    }
    peruser_multiplexer_state_attach(retained->mux_state, retained->mux_state_size);
    return OK;
}

static const char *environment_label(int environment, char *buf, size_t cap)
{
    if (environment < 0) {
        return "multiplexer";
    }
    if (peruser_config_environment_name(environment, buf, cap) != 0) {
        return "an old environment";
    }
    return buf;
}

int peruser_shim_return_queued(int environment, int *lost)
{
    static unsigned char message[PERUSER_MESSAGE_MAX];
    int moved = 0, receiver;

    *lost = 0;
    if (environment < 0 || environment >= channel_env_count
        || channels[CHANNEL(environment, HANDOFF_RECEIVE)] < 0) {
        return 0;
    }
    receiver = channels[CHANNEL(environment, HANDOFF_RECEIVE)];
    for (;;) {
        int fd = -1, rv;
        ssize_t n = peruser_shim_recv_fd(receiver, message, sizeof message, 1, &fd);
        if (n == -EINTR || n == -EBADMSG) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        /* Their tickets are the environment's own: the multiplexers take them back as such. */
        rv = peruser_shim_send_fd(channels[CHANNEL(environment, HANDBACK_SEND)], fd, message, (size_t)n);
        close(fd); /* sent or not, the parent keeps no client socket */
        if (rv == 0) {
            moved++;
        }
        else {
            (*lost)++;
            ap_log_error(APLOG_MARK, APLOG_ERR, (apr_status_t)-rv, ap_server_conf,
                         "peruser: could not return a queued connection to the multiplexers; closed");
        }
    }
    return moved;
}

int peruser_shim_renew_channels(int environment)
{
    int end;
    if (environment < 0 || environment >= channel_env_count) {
        return -1;
    }
    for (end = 0; end < CHANNEL_ENDS; end++) {
        close_fd(&channels[CHANNEL(environment, end)]);
    }
    if (one_way_channel(&channels[CHANNEL(environment, HANDOFF_SEND)],
                        &channels[CHANNEL(environment, HANDOFF_RECEIVE)]) != 0
        || one_way_channel(&channels[CHANNEL(environment, HANDBACK_SEND)],
                           &channels[CHANNEL(environment, HANDBACK_RECEIVE)]) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, ap_server_conf,
                     "peruser: cannot renew the channels of environment %d", environment);
        return -1;
    }
    return 0;
}

int peruser_shim_give_channels(int slot, int environment)
{
    uint32_t message[2];
    int rv;
    if (slot < 0 || slot >= MOST_SERVER_LIMIT || retained->control[slot] < 0
        || environment < 0 || environment >= channel_env_count) {
        return -EINVAL;
    }
    message[0] = (uint32_t)environment;
    message[1] = PERUSER_CONTROL_HANDOFF;
    rv = peruser_shim_send_fd(retained->control[slot], channels[CHANNEL(environment, HANDOFF_SEND)],
                              message, sizeof message);
    if (rv == 0) {
        message[1] = PERUSER_CONTROL_HANDBACK;
        rv = peruser_shim_send_fd(retained->control[slot], channels[CHANNEL(environment, HANDBACK_RECEIVE)],
                                  message, sizeof message);
    }
    return rv;
}

/* Moves a new worker into each of its environment's cgroups; 0, or -1 (logged). */
static int move_into_cgroups(pid_t pid, int environment)
{
    int count = peruser_config_environment_cgroup_count(environment), i;
    char dir[PATH_MAX], path[PATH_MAX + 16], name[256], text[32];

    for (i = 0; i < count; i++) {
        int fd, len, ok;
        if (peruser_config_environment_cgroup(environment, i, dir, sizeof dir) != 0) {
            return -1;
        }
        apr_snprintf(path, sizeof path, "%s/cgroup.procs", dir);
        len = apr_snprintf(text, sizeof text, "%d\n", (int)pid);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        ok = fd >= 0 && write(fd, text, (size_t)len) == len;
        if (!ok || close(fd) != 0) {
            int e = errno;
            if (fd >= 0 && !ok) {
                close(fd);
            }
            ap_log_error(APLOG_MARK, APLOG_ERR, e, ap_server_conf,
                         "peruser: cannot move a new worker of environment %s (pid %d) into cgroup %s; "
                         "the worker is not started",
                         environment_label(environment, name, sizeof name), (int)pid, dir);
            return -1;
        }
    }
    return 0;
}

int peruser_shim_spawn(int slot, int environment, int type)
{
    pid_t pid;
    int gate[2] = { -1, -1 }, control[2] = { -1, -1 };

    (void)ap_update_child_status_from_indexes(slot, 0, SERVER_STARTING, NULL);
    if (slot < 0 || slot >= MOST_SERVER_LIMIT) {
        return -1;
    }
    if (environment < 0 && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, control) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, ap_server_conf, "peruser: cannot create a control channel");
        (void)ap_update_child_status_from_indexes(slot, 0, SERVER_DEAD, NULL);
        return -1;
    }
    parent_pid = getpid();
    /* A worker with cgroups waits at this gate until the parent has moved it into them. */
    if (environment >= 0 && peruser_config_environment_cgroup_count(environment) > 0
        && pipe2(gate, O_CLOEXEC) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, ap_server_conf, "peruser: cannot create a start gate");
        (void)ap_update_child_status_from_indexes(slot, 0, SERVER_DEAD, NULL);
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, ap_server_conf, "peruser: fork failed");
        (void)ap_update_child_status_from_indexes(slot, 0, SERVER_DEAD, NULL);
        close_fd(&gate[0]);
        close_fd(&gate[1]);
        close_fd(&control[0]);
        close_fd(&control[1]);
        return -1;
    }
    if (pid == 0) {
        close_fd(&control[0]);
        control_fd = control[1];
        if (gate[0] >= 0) {
            char go;
            ssize_t r;
            close_fd(&gate[1]);
            do {
                r = read(gate[0], &go, 1);
            } while (r < 0 && errno == EINTR);
            if (r != 1) {
                _exit(APEXIT_CHILDSICK); /* not moved (the parent logged why): never serve */
            }
            close_fd(&gate[0]);
        }
#if AP_HAS_THREAD_LOCAL
        ap_thread_current_after_fork();
#endif
        my_slot = slot;
        if (environment < 0) {
            multiplexer_main();
        }
        else {
            worker_main(environment);
        }
        exit(0); /* not reached */
    }
    if (gate[1] >= 0) {
        close_fd(&gate[0]);
        if (move_into_cgroups(pid, environment) == 0) {
            (void)!write(gate[1], "g", 1);
        }
        close_fd(&gate[1]); /* without the byte, the worker exits at the gate */
    }
    close_fd(&control[1]);
    if (control[0] >= 0) {
        shutdown(control[0], SHUT_RD); /* the parent only sends on it */
        close_fd(&retained->control[slot]);
        retained->control[slot] = control[0];
    }
    ap_scoreboard_image->parent[slot].pid = pid;
    ap_scoreboard_image->parent[slot].generation = retained->mpm->my_generation;
    return (int)pid;
}

int peruser_shim_signal(int pid, int sig)
{
    if (pid <= 0) {
        return -EINVAL;
    }
    return kill((pid_t)pid, sig) == 0 ? 0 : -errno;
}

static void reap_children(int quiet)
{
    int status, environment, slot, type;
    pid_t pid;
    char name[256];

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!peruser_supervisor_reaped(pid, clean, quiet, now_ms(), &slot, &environment, &type)) {
            /* Not one of ours: perhaps a piped logger, which apr restarts. */
            apr_proc_t proc;
            proc.pid = pid;
            apr_proc_other_child_alert(&proc, APR_OC_REASON_DEATH, status);
            continue;
        }
        ap_scoreboard_image->parent[slot].pid = 0;
        if (slot >= 0 && slot < MOST_SERVER_LIMIT) {
            close_fd(&retained->control[slot]);
        }
        (void)ap_update_child_status_from_indexes(slot, 0, SERVER_DEAD, NULL);
        if (quiet || clean) {
            continue;
        }
        if (WIFSIGNALED(status)) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, ap_server_conf,
                         "peruser: %s %s (pid %d, slot %d) was killed by signal %d",
                         environment < 0 ? "" : "worker of", environment_label(environment, name, sizeof name),
                         (int)pid, slot, WTERMSIG(status));
        }
        else {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, ap_server_conf,
                         "peruser: %s %s (pid %d, slot %d) exited with status %d",
                         environment < 0 ? "" : "worker of", environment_label(environment, name, sizeof name),
                         (int)pid, slot, WEXITSTATUS(status));
        }
    }
}

/* Environments the multiplexers asked workers for (4-byte indices; validated by Swift). */
static void read_demands(void)
{
    uint32_t batch[64];
    ssize_t n;
    while ((n = read(retained->demand[0], batch, sizeof batch)) > 0) {
        ssize_t i;
        for (i = 0; i + 1 <= n / (ssize_t)sizeof(uint32_t); i++) {
            peruser_supervisor_demand((int)batch[i]);
        }
    }
}

/* Signals only pids from the parent's private records, never pids read from shared memory. */
static void signal_children(int sig)
{
    static int pids[MOST_SERVER_LIMIT];
    int count = peruser_supervisor_pids(pids, MOST_SERVER_LIMIT), i;
    for (i = 0; i < count && i < MOST_SERVER_LIMIT; i++) {
        kill(pids[i], sig);
    }
}

static void stop_children(void)
{
    long long deadline = now_ms() + STOP_GRACE_MS;
    signal_children(SIGTERM);
    while (peruser_supervisor_pids(NULL, 0) > 0 && now_ms() < deadline) {
        poll(NULL, 0, 20);
        reap_children(1);
    }
    if (peruser_supervisor_pids(NULL, 0) > 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, ap_server_conf,
                     "peruser: children still alive %d ms after SIGTERM; sending SIGKILL", STOP_GRACE_MS);
        signal_children(SIGKILL);
        while (peruser_supervisor_pids(NULL, 0) > 0) {
            poll(NULL, 0, 20);
            reap_children(1);
        }
    }
}

/* Interrupts the parent's poll when a child exits. */
static void on_child_exit(int sig)
{
}

/* Waits for a demand, a child's exit, a signal, or the next maintenance round. */
static void parent_wait(int timeout_ms)
{
    struct pollfd pfd;
    pfd.fd = retained->demand[0];
    pfd.events = POLLIN;
    pfd.revents = 0;
    poll(&pfd, 1, timeout_ms);
}

/* graceful-stop: multiplexers finish what they hold, then workers drain and finish,
 * within GracefulShutdownTimeout (0: as long as it takes); then whoever is left is stopped. */
static void graceful_stop(void)
{
    long long cutoff = ap_graceful_shutdown_timeout
        ? now_ms() + 1000LL * ap_graceful_shutdown_timeout : 0;
    ap_close_listeners();
    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf,
                 "caught " AP_SIG_GRACEFUL_STOP_STRING ", shutting down gracefully");
    retained->mpm->shutdown_pending = 0;
    while (peruser_supervisor_drain_all(now_ms()) > 0 && !retained->mpm->shutdown_pending
           && (!cutoff || now_ms() < cutoff)) {
        parent_wait(MAINTENANCE_INTERVAL_MS);
        reap_children(0);
    }
    stop_children();
}

static int peruser_run(apr_pool_t *_pconf, apr_pool_t *plog, server_rec *s)
{
    char error[512];
    long long last_monitor = 0;
    int slots;
    struct sigaction sa;

    ap_log_pid(pconf, ap_pid_fname);
    if (!retained->mpm->was_graceful) {
        retained->scoreboard_slots = peruser_config_limit("ServerLimit");
        if (ap_run_pre_mpm(s->process->pool, SB_SHARED) != OK) {
            retained->mpm->mpm_state = AP_MPMQ_STOPPING;
            return !OK;
        }
        ap_scoreboard_image->global->running_generation = retained->mpm->my_generation;
    }
    else if (peruser_config_limit("ServerLimit") != retained->scoreboard_slots) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "peruser: changing ServerLimit to %d needs a full restart; keeping %d",
                     peruser_config_limit("ServerLimit"), retained->scoreboard_slots);
    }
    slots = retained->scoreboard_slots;
    ap_unixd_mpm_set_signals(pconf, one_process);
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_child_exit;
    sigaction(SIGCHLD, &sa, NULL);

    if (open_lasting_channels() != OK || open_channels(pconf) != OK || map_child_table(slots) != OK) {
        close_channels((unsigned)retained->mpm->my_generation);
        retained->mpm->mpm_state = AP_MPMQ_STOPPING;
        return !OK;
    }
    /* Counters carry over a graceful restart, not a full one (the scoreboard is new then). */
    if (peruser_supervisor_begin(retained->records, MOST_SERVER_LIMIT, retained->table, retained->table_size,
                                 slots, (unsigned)retained->mpm->my_generation,
                                 retained->mpm->was_graceful ? retained->previous_table : NULL,
                                 retained->previous_table_size, retained->previous_table_environments,
                                 error, sizeof error) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "peruser: %s", error);
        close_channels((unsigned)retained->mpm->my_generation);
        retained->mpm->mpm_state = AP_MPMQ_STOPPING;
        return !OK;
    }

    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf,
                 "%s configured -- resuming normal operations", ap_get_server_description());
    if (h2_switched_off_for && !retained->mpm->was_graceful) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf,
                     "peruser: HTTP/2 (h2 and h2c) is switched off in every virtual host: %s is loaded and is "
                     "not thread-safe, and mod_http2 would run several requests of one connection at once "
                     "on its own threads inside a worker. Clients get HTTP/1.1. Servers without such a "
                     "module keep HTTP/2; serialized HTTP/2 for them is planned (README, HTTP/2)",
                     h2_switched_off_for);
    }
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, ap_server_conf, "Server built: %s", ap_get_server_built());
    ap_log_command_line(plog, s);
    ap_log_mpm_common(s);
    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf,
                 "peruser: generation %d, %d environment(s), %d to %d multiplexer(s), %d slots",
                 (int)retained->mpm->my_generation, channel_env_count,
                 peruser_config_limit("MinMultiplexers"), peruser_config_limit("MaxMultiplexers"), slots);

    retained->mpm->mpm_state = AP_MPMQ_RUNNING;
    while (!retained->mpm->restart_pending && !retained->mpm->shutdown_pending) {
        long long now;
        reap_children(0);
        read_demands();
        now = now_ms();
        peruser_supervisor_maintain(now);
        if (now - last_monitor >= 1000) {
            last_monitor = now;
            ap_run_monitor(pconf, ap_server_conf);
            apr_proc_other_child_refresh_all(APR_OC_REASON_RUNNING);
        }
        parent_wait(MAINTENANCE_INTERVAL_MS);
    }

    retained->mpm->mpm_state = AP_MPMQ_STOPPING;
    close_channels((unsigned)retained->mpm->my_generation);

    if (retained->mpm->shutdown_pending && retained->mpm->is_ungraceful) {
        stop_children();
        ap_remove_pid(pconf, ap_pid_fname);
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf, "caught SIGTERM, shutting down");
        return DONE;
    }
    if (retained->mpm->shutdown_pending) {
        graceful_stop();
        ap_remove_pid(pconf, ap_pid_fname);
        return DONE;
    }

    if (retained->mpm->is_ungraceful) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf,
                     "SIGHUP received.  Attempting to restart");
        stop_children();
    }
    else {
        /* Children of this generation finish what they hold; the next generation's
         * supervisor retires them (multiplexers first, then workers drain). */
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf,
                     "Graceful restart requested, doing restart");
    }
    ++retained->mpm->my_generation;
    ap_scoreboard_image->global->running_generation = retained->mpm->my_generation;
    return OK;
}

/* ===================================================================== */
/* Hooks                                                                  */
/* ===================================================================== */

void peruser_shim_emit(void *ctx, const char *data, size_t len)
{
    ap_rwrite(data, (int)len, (request_rec *)ctx);
}

/* mod_status's extension hook: Peruser's table under mod_status's own, ?peruser_stats for
 * the environments, and Peruser lines in ?auto. */
static int peruser_status_hook(request_rec *r, int flags)
{
    static int states[MOST_SERVER_LIMIT];
    int slots = retained->scoreboard_slots, i, view;

    if (slots > MOST_SERVER_LIMIT) {
        slots = MOST_SERVER_LIMIT;
    }
    for (i = 0; i < slots; i++) {
        worker_score *ws = ap_get_scoreboard_worker_from_indexes(i, 0);
        states[i] = ws ? ws->status : SERVER_DEAD;
    }
    if (flags & AP_STATUS_SHORT) {
        view = PERUSER_STATUS_VIEW_AUTO;
    }
    else if (r->args && ap_strstr_c(r->args, "peruser_stats")) {
        view = PERUSER_STATUS_VIEW_STATISTICS;
    }
    else {
        view = PERUSER_STATUS_VIEW_CHILDREN;
    }
    peruser_status_render(view, states, slots, r);
    return OK;
}

static int peruser_query(int query_code, int *result, apr_status_t *rv)
{
    *rv = APR_SUCCESS;
    switch (query_code) {
    case AP_MPMQ_MAX_DAEMON_USED:
        *result = peruser_supervisor_slots_in_use();
        break;
    case AP_MPMQ_IS_THREADED:
        *result = AP_MPMQ_NOT_SUPPORTED;
        break;
    case AP_MPMQ_IS_FORKED:
        *result = AP_MPMQ_DYNAMIC;
        break;
    case AP_MPMQ_HARD_LIMIT_DAEMONS:
        *result = retained && retained->scoreboard_slots ? retained->scoreboard_slots
                                                         : peruser_config_limit("ServerLimit");
        break;
    case AP_MPMQ_MAX_DAEMONS:
        *result = peruser_config_limit("MaxClients");
        break;
    case AP_MPMQ_HARD_LIMIT_THREADS:
    case AP_MPMQ_MAX_THREADS:
        *result = 1;
        break;
    case AP_MPMQ_MIN_SPARE_DAEMONS:
        *result = peruser_config_limit("MinSpareProcessors");
        break;
    case AP_MPMQ_MAX_SPARE_DAEMONS:
        *result = peruser_config_limit("MaxSpareProcessors");
        break;
    case AP_MPMQ_MIN_SPARE_THREADS:
    case AP_MPMQ_MAX_SPARE_THREADS:
        *result = 0;
        break;
    case AP_MPMQ_MAX_REQUESTS_DAEMON:
        *result = ap_max_requests_per_child;
        break;
    case AP_MPMQ_MPM_STATE:
        *result = retained->mpm->mpm_state;
        break;
    case AP_MPMQ_GENERATION:
        *result = retained->mpm->my_generation;
        break;
    default:
        *rv = APR_ENOTIMPL;
        break;
    }
    return OK;
}

static const char *peruser_get_name(void)
{
    return "peruser";
}

static int peruser_open_logs(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    int startup = retained->mpm->module_loads == 1;
    pconf = p;
    if (ap_setup_listeners(ap_server_conf) < 1) {
        ap_log_error(APLOG_MARK, APLOG_ALERT | (startup ? APLOG_STARTUP : 0), 0,
                     startup ? NULL : s, "no listening sockets available, shutting down");
        return !OK;
    }
    return OK;
}

static int peruser_pre_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp)
{
    const char *userdata_key = "mpm_peruser_module";
    int foreground, no_detach;

    one_process = ap_exists_config_define("ONE_PROCESS") || ap_exists_config_define("DEBUG");
    foreground = one_process || ap_exists_config_define("FOREGROUND");
    no_detach = ap_exists_config_define("NO_DETACH");

    retained = ap_retained_data_get(userdata_key);
    if (!retained) {
        retained = ap_retained_data_create(userdata_key, sizeof(*retained));
        retained->mpm = ap_unixd_mpm_get_retained_data();
        retained->records = ap_retained_data_create("mpm_peruser_children_v2",
                                                    sizeof(peruser_child_record) * MOST_SERVER_LIMIT);
        retained->demand[0] = retained->demand[1] = -1;
        retained->table_fd = -1;
    }
    if (!retained->control && (retained->control = malloc(sizeof(int) * MOST_SERVER_LIMIT))) {
        int i;
        for (i = 0; i < MOST_SERVER_LIMIT; i++) {
            retained->control[i] = -1;
        }
    }
    retained->mpm->mpm_state = AP_MPMQ_STARTING;
    if (retained->mpm->baton != retained) {
        retained->mpm->was_graceful = 0;
        retained->mpm->baton = retained;
    }
    ++retained->mpm->module_loads;

    if (retained->mpm->module_loads == 2 && !foreground) {
        apr_status_t rv;
        ap_fatal_signal_setup(ap_server_conf, p);
        rv = apr_proc_detach(no_detach ? APR_PROC_DETACH_FOREGROUND : APR_PROC_DETACH_DAEMONIZE);
        if (rv != APR_SUCCESS) {
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, NULL, "apr_proc_detach failed");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ap_listen_pre_config();
    peruser_config_reset();
    memset(&mux_identity, 0, sizeof mux_identity);
    handback_enabled = 1;
    return OK;
}

/* Core's pre_config resets MaxConnectionsPerChild to 0 (unlimited); Peruser's default is
 * 1000, and core's own directive (or MaxRequestsPerChild) still overrides it. */
static int peruser_pre_config_after_core(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp)
{
    ap_max_requests_per_child = DEFAULT_MAX_REQUESTS_PER_CHILD;
    return OK;
}

/* The first directive named `name` (whose arguments start with `args`, if given) in the
 * configuration tree, outside <Processor> sections; NULL if there is none. */
static const ap_directive_t *find_directive(const ap_directive_t *d, const char *name, const char *args)
{
    for (; d; d = d->next) {
        const ap_directive_t *found;
        if (!strcasecmp(d->directive, name)
            && (!args || (d->args && !strncmp(d->args, args, strlen(args))))) {
            return d;
        }
        if (d->first_child && strcasecmp(d->directive, "<Processor")
            && (found = find_directive(d->first_child, name, args))) {
            return found;
        }
    }
    return NULL;
}

static const char *where(apr_pool_t *p, const ap_directive_t *d)
{
    return d ? apr_psprintf(p, "line %d of %s", d->line_num, d->filename) : "the default";
}

/* Where environment `name` is declared: its <Processor> block, or the AssignUserID behind an
 * implicit assign-USER-GROUP environment. */
static const char *environment_origin(apr_pool_t *p, const char *name, unsigned uid, unsigned gid)
{
    const ap_directive_t *d = find_directive(ap_conftree, "<Processor", apr_pstrcat(p, name, ">", NULL));
    if (d) {
        return apr_psprintf(p, "<Processor %s> (%s)", name, where(p, d));
    }
    if (!strncmp(name, "assign-", 7)) {
        const char *rest = name + 7, *dash = strchr(rest, '-');
        if (dash && (d = find_directive(ap_conftree, "AssignUserID",
                                        apr_pstrndup(p, rest, (apr_size_t)(dash - rest))))) {
            return apr_psprintf(p, "AssignUserID %s (%s)", d->args, where(p, d));
        }
    }
    return apr_psprintf(p, "environment %s", name);
}

/* A tenant must never share the multiplexers' uid or gid: its code could signal or trace
 * them and stop all routing. Environments sharing a uid are one trust domain: warned. */
static int check_identities(apr_pool_t *p, int startup)
{
    uid_t mux_uid = mux_identity.user ? mux_identity.uid : ap_unixd_config.user_id;
    gid_t mux_gid = mux_identity.group ? mux_identity.gid : ap_unixd_config.group_id;
    const char *user_directive = mux_identity.user
        ? apr_psprintf(p, "MultiplexerUser %s (%s)", mux_identity.user, where(p, mux_identity.user_line))
        : apr_psprintf(p, "User %s (%s)", ap_unixd_config.user_name,
                       where(p, find_directive(ap_conftree, "User", NULL)));
    const char *group_directive = mux_identity.group
        ? apr_psprintf(p, "MultiplexerGroup %s (%s)", mux_identity.group, where(p, mux_identity.group_line))
        : apr_psprintf(p, "Group (%s)", where(p, find_directive(ap_conftree, "Group", NULL)));
    int count = peruser_config_environment_count(), e, f;
    unsigned *uids = apr_pcalloc(p, sizeof(unsigned) * (count ? count : 1));
    char name[256], user[256];

    for (e = 0; e < count; e++) {
        unsigned uid, gid;
        if (peruser_config_environment_identity(e, &uid, &gid, user, sizeof user) != 0
            || peruser_config_environment_name(e, name, sizeof name) != 0) {
            continue;
        }
        uids[e] = uid;
        if (uid == (unsigned)mux_uid || gid == (unsigned)mux_gid) {
            ap_log_error(APLOG_MARK, APLOG_CRIT | (startup ? APLOG_STARTUP : 0), 0, NULL,
                         "peruser: %s runs as %s %u, which the multiplexers run as too (%s): its code "
                         "could signal or trace the multiplexers and stop every site. Give the tenant a "
                         "user and group of its own, or run the multiplexers under an account no tenant "
                         "uses: MultiplexerUser peruser-mux and MultiplexerGroup peruser-mux (the Debian "
                         "package creates that account and sets both)",
                         environment_origin(p, name, uid, gid),
                         uid == (unsigned)mux_uid ? "uid" : "gid", uid == (unsigned)mux_uid ? uid : gid,
                         uid == (unsigned)mux_uid ? user_directive : group_directive);
            return !OK;
        }
        for (f = 0; startup && f < e; f++) {
            char other[256];
            if (uids[f] == uid && peruser_config_environment_name(f, other, sizeof other) == 0) {
                ap_log_error(APLOG_MARK, APLOG_WARNING | APLOG_STARTUP, 0, NULL,
                             "peruser: environments %s and %s both run as uid %u: they are one trust "
                             "domain (each can signal, trace and read the other's workers)",
                             other, name, uid);
                break;
            }
        }
    }
    return OK;
}

/* A loaded module that must never run two requests at once in one process, or NULL. PHP says
 * so by its build: a thread-safe (ZTS) PHP exports TSRM's tsrm_startup, Debian's does not.
 * mod_perl and mod_python run one interpreter per process here. */
static const char *thread_unsafe_module(void)
{
    module *m;
    for (m = ap_top_module; m; m = m->next) {
        if (!strncmp(m->name, "mod_php", 7) && !dlsym(RTLD_DEFAULT, "tsrm_startup")) {
            return "mod_php (built without thread safety, as Debian's is)";
        }
        if (!strcmp(m->name, "mod_perl.c")) {
            return "mod_perl";
        }
        if (!strcmp(m->name, "mod_python.c")) {
            return "mod_python";
        }
    }
    return NULL;
}

/* mod_http2 runs the streams of one connection at once on threads of its own inside the
 * worker, and treats every MPM but prefork as able to. With a module that is not thread-safe
 * that corrupts memory (any client can do it), so h2 and h2c are taken out of every server's
 * Protocols: ALPN, Upgrade and prior knowledge then all stay HTTP/1.1. */
static int peruser_post_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    const char *unsafe = thread_unsafe_module();
    server_rec *v;

    h2_switched_off_for = NULL;
    if (!unsafe || !ap_find_linked_module("mod_http2.c")) {
        return OK;
    }
    for (v = s; v; v = v->next) {
        core_server_config *conf = ap_get_core_module_config(v->module_config);
        apr_array_header_t *kept;
        int i;
        if (!conf || !conf->protocols) {
            continue;
        }
        kept = apr_array_make(p, conf->protocols->nelts + 1, sizeof(const char *));
        for (i = 0; i < conf->protocols->nelts; i++) {
            const char *name = APR_ARRAY_IDX(conf->protocols, i, const char *);
            if (strcasecmp(name, "h2") && strcasecmp(name, "h2c")) {
                APR_ARRAY_PUSH(kept, const char *) = name;
            }
        }
        if (conf->protocols->nelts > 0 && kept->nelts == 0) {
            APR_ARRAY_PUSH(kept, const char *) = AP_PROTOCOL_HTTP1;
        }
        conf->protocols = kept;
    }
    h2_switched_off_for = unsafe;
    return OK;
}

static int peruser_check_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    int startup = retained->mpm->module_loads == 1;
    char error[512];
    server_rec *vh;

    if (peruser_message_header_size() != PERUSER_MESSAGE_HEADER) {
        ap_log_error(APLOG_MARK, APLOG_CRIT | (startup ? APLOG_STARTUP : 0), 0, NULL,
                     "peruser: internal error: the C shim and the Swift library disagree on the "
                     "message header (%d and %ld bytes); rebuild the module",
                     PERUSER_MESSAGE_HEADER, peruser_message_header_size());
        return !OK;
    }
    if (one_process) {
        ap_log_error(APLOG_MARK, APLOG_CRIT | (startup ? APLOG_STARTUP : 0), 0, NULL,
                     "peruser: ONE_PROCESS/DEBUG mode is not supported: a root process "
                     "must never serve connections");
        return !OK;
    }
    if (ap_unixd_config.chroot_dir) {
        ap_log_error(APLOG_MARK, APLOG_CRIT | (startup ? APLOG_STARTUP : 0), 0, NULL,
                     "peruser: ChrootDir %s is not supported by this MPM (it would confine only the "
                     "multiplexers); use Chroot inside <Processor> for workers and MultiplexerChroot "
                     "for multiplexers", ap_unixd_config.chroot_dir);
        return !OK;
    }
    if (peruser_config_validate(error, sizeof error) != 0) {
        ap_log_error(APLOG_MARK, APLOG_CRIT | (startup ? APLOG_STARTUP : 0), 0, NULL,
                     "peruser: %s", error);
        return !OK;
    }
    if (check_identities(ptemp, startup) != OK) {
        return !OK;
    }
    if (startup) {
        for (vh = s->next; vh; vh = vh->next) {
            if (server_environment(vh) < 0) {
                ap_log_error(APLOG_MARK, APLOG_WARNING | APLOG_STARTUP, 0, NULL,
                             "peruser: virtual host %s has no ServerEnvironment (and the main server "
                             "has none to inherit); its requests will be answered with 503",
                             vhost_description(ptemp, vh));
            }
        }
    }
    return OK;
}

static void peruser_hooks(apr_pool_t *p)
{
    static const char *const aszSucc[] = { "core.c", NULL };
    static const char *const others[][2] = { { "prefork.c", "mpm_prefork" }, { "event.c", "mpm_event" },
                                              { "worker.c", "mpm_worker" } };
    int i;

    /* httpd refuses two MPMs ("More than one MPM loaded"); say which and how to fix it on
     * Debian, where a module package (mod_php) may have enabled prefork beside peruser. */
    for (i = 0; i < 3; i++) {
        if (ap_find_linked_module(others[i][0])) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, NULL,
                         "peruser: %s is loaded too, and Apache loads one MPM. On Debian: "
                         "rm /etc/apache2/mods-enabled/%s.load /etc/apache2/mods-enabled/%s.conf "
                         "(a2dismod refuses while php8.2 declares it a dependency)",
                         others[i][1], others[i][1], others[i][1]);
        }
    }

    ap_hook_open_logs(peruser_open_logs, NULL, aszSucc, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_config(peruser_pre_config, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_config(peruser_pre_config_after_core, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_check_config(peruser_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(peruser_post_config, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_mpm(peruser_run, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_mpm_query(peruser_query, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_mpm_get_name(peruser_get_name, NULL, NULL, APR_HOOK_MIDDLE);

    ap_hook_pre_connection(worker_pre_connection, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_read_request(worker_pre_read_request, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_post_read_request(worker_post_read_request, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_quick_handler(worker_gate_quick_handler, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_translate_name(worker_gate_translate, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_handler(worker_gate_handler, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_log_transaction(worker_log_transaction, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_insert_network_bucket(worker_insert_network_bucket, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, peruser_status_hook, NULL, NULL, APR_HOOK_MIDDLE);
    record_filter_handle = ap_register_input_filter("PERUSER_RECORD", record_filter, NULL,
                                                    AP_FTYPE_CONNECTION);
}

AP_DECLARE_MODULE(mpm_peruser) = {
    MPM20_MODULE_STUFF,
    NULL,                   /* hook to run before apache parses args */
    NULL,                   /* create per-directory config structure */
    NULL,                   /* merge per-directory config structures */
    create_server_config,   /* create per-server config structure */
    merge_server_config,    /* merge per-server config structures */
    peruser_cmds,           /* command table */
    peruser_hooks           /* register hooks */
};

/* Apache's side of a child's life (pools, signals, child_init, the scoreboard, mod_unixd's
 * privilege drop), of routing (Apache's own vhost matching), and of the parent's loop. The
 * child's life itself is Swift: Worker/WorkerMain.swift and Multiplexer/MultiplexerMain.swift. */
#include "peruser.h"
#include "http_connection.h"
#include "http_main.h"
#include "http_vhost.h"
#include "ap_listen.h"
#include "apr_portable.h"
#include "apr_signal.h"
#include "apr_strings.h"
#include "apr_uri.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>

#define retained peruser_retained_data

int peruser_is_worker;
int peruser_my_environment = -1;

static apr_pool_t *pchild;
static int my_slot = -1;
/* Set by signals: SIGUSR1 asks a child to exit when done; SIGWINCH asks a worker to drain its
 * channel first (its generation's multiplexers are gone). */
static volatile sig_atomic_t retire_requested, drain_requested;

/* Worker */
static ap_sb_handle_t *sbh;
static apr_bucket_alloc_t *bucket_alloc;
static apr_pool_t *ptrans;
static long connection_id;

/* Multiplexer: a pool cleared for every routing decision. */
static apr_pool_t *route_pool;

/* Httpd's keep-alive loop ends a connection after the current request once the MPM state says
 * STOPPING (ap_graceful_stop_signalled). */
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

int peruser_shim_drain_requested(void)
{
    return drain_requested;
}

void peruser_shim_child_start(int slot)
{
    apr_allocator_t *allocator;
    struct sigaction sa;
#if AP_HAS_THREAD_LOCAL
    apr_thread_t *thd = NULL;
    ap_thread_current_after_fork();
#endif
    my_slot = slot;
    retained->mpm->mpm_state = AP_MPMQ_STARTING;
    apr_signal(SIGHUP, SIG_DFL);
    apr_signal(SIGTERM, SIG_DFL);
    apr_signal(SIGCHLD, SIG_DFL);
    apr_signal(SIGINT, SIG_IGN);
    /* No SA_RESTART: a worker blocked on its channel must wake up to these. */
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_retire;
    sigaction(AP_SIG_GRACEFUL, &sa, NULL);
    sa.sa_handler = on_drain;
    sigaction(AP_SIG_GRACEFUL_STOP, &sa, NULL);
    ap_fatal_signal_child_setup(ap_server_conf);

    apr_allocator_create(&allocator);
    apr_allocator_max_free_set(allocator, ap_max_mem_free);
    apr_pool_create_ex(&pchild, peruser_pconf, NULL, allocator);
    apr_allocator_owner_set(allocator, pchild);
    apr_pool_tag(pchild, "pchild");
#if AP_HAS_THREAD_LOCAL
    if (ap_thread_main_create(&thd, pchild) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, ap_server_conf, "peruser: could not initialize the child's main thread");
        exit(APEXIT_CHILDFATAL);
    }
#endif
}

void peruser_shim_child_exit(int code)
{
    if (pchild) {
        apr_pool_destroy(pchild); /* runs the modules' child cleanups */
    }
    exit(code);
}

void peruser_shim_close_listeners(void)
{
    ap_close_listeners();
}

int peruser_shim_listeners(int *fds, int cap)
{
    ap_listen_rec *lr;
    int count = 0;
    for (lr = ap_listeners; lr; lr = lr->next) {
        apr_os_sock_t fd;
        if (apr_os_sock_get(&fd, lr->sd) == APR_SUCCESS && count < cap) {
            fds[count++] = fd;
        }
    }
    return count;
}

void peruser_shim_reopen_scoreboard(void)
{
    ap_reopen_scoreboard(pchild, NULL, 0);
}

/* mod_unixd's drop_privileges sets the groups, chroots, then sets the user, in that order; this
 * child's copy of its configuration carries the multiplexers' own. */
int peruser_shim_multiplexer_drop_privileges(const char *chroot, const char *user, int64_t uid, int64_t gid)
{
    if (chroot) {
        ap_unixd_config.chroot_dir = apr_pstrdup(pchild, chroot);
    }
    if (user && uid >= 0) {
        ap_unixd_config.user_name = apr_pstrdup(pchild, user);
        ap_unixd_config.user_id = (uid_t)uid;
    }
    if (gid >= 0) {
        ap_unixd_config.group_id = (gid_t)gid;
    }
    return ap_run_drop_privileges(pchild, ap_server_conf) ? -1 : 0;
}

void peruser_shim_multiplexer_init(int slot)
{
    apr_pool_create(&route_pool, pchild);
    apr_pool_tag(route_pool, "route");
    retained->mpm->mpm_state = AP_MPMQ_RUNNING;
    ap_update_child_status_from_indexes(slot, 0, SERVER_READY, NULL);
}

int peruser_shim_worker_init(int slot, int environment)
{
    peruser_is_worker = 1;
    peruser_my_environment = environment;
    ap_run_child_init(pchild, ap_server_conf);
    ap_create_sb_handle(&sbh, pchild, slot, 0);
    bucket_alloc = apr_bucket_alloc_create(pchild);
    apr_pool_create(&ptrans, pchild);
    apr_pool_tag(ptrans, "transaction");
    retained->mpm->mpm_state = AP_MPMQ_RUNNING;
    return ap_max_requests_per_child > 0 ? ap_max_requests_per_child : 0;
}

void peruser_shim_worker_ready(void)
{
    ap_update_child_status(sbh, SERVER_READY, NULL);
}

void peruser_shim_serve(int fd, const unsigned char *consumed, size_t len)
{
    apr_pool_clear(ptrans);
    peruser_shim_serve_connection(ptrans, sbh, bucket_alloc, fd, consumed, len, connection_id++);
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

int peruser_shim_route(int fd, const char *host, const char *target)
{
    struct sockaddr_storage local, peer;
    socklen_t local_len = sizeof local, peer_len = sizeof peer;
    conn_rec *c;
    request_rec *r;
    char ip[INET6_ADDRSTRLEN];
    int environment;
    long left_out;

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
    inet_ntop(peer.ss_family, peer.ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&peer)->sin6_addr
                                                         : (void *)&((struct sockaddr_in *)&peer)->sin_addr,
              ip, sizeof ip);
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
            r->hostname = uri.hostname ? uri.hostname : r->hostname;
            r->uri = uri.path ? uri.path : r->uri;
        }
    }
    else if (target && target[0] == '/') {
        r->uri = apr_pstrndup(route_pool, target, strcspn(target, "?"));
    }
    if (host) {
        apr_table_setn(r->headers_in, "Host", host);
    }
    ap_update_vhost_from_headers(r);

    if ((environment = peruser_server_environment(r->server)) >= 0) {
        return environment;
    }
    if ((left_out = peruser_log_admit(PERUSER_NOISY_NO_ENVIRONMENT)) >= 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, ap_server_conf,
                     "peruser: virtual host %s has no ServerEnvironment; answered 503 to %s (Host or TLS server "
                     "name: %s; a TLS connection is closed instead)%s", peruser_vhost_description(route_pool, r->server),
                     c->client_ip, host ? host : "-",
                     left_out ? apr_psprintf(route_pool, " (%ld similar lines left out)", left_out) : "");
    }
    return PERUSER_ROUTE_NO_ENVIRONMENT;
}

/* ---- The parent's loop (Parent/ParentLoop.swift) ---- */

void peruser_shim_scoreboard_slot(int slot, int pid, int state)
{
    if (slot < 0 || slot >= retained->lasting->scoreboard_slots) {
        return;
    }
    ap_update_child_status_from_indexes(slot, 0, state == PERUSER_SCOREBOARD_STARTING ? SERVER_STARTING
                                                                                       : SERVER_DEAD, NULL);
    ap_scoreboard_image->parent[slot].pid = pid;
    if (state == PERUSER_SCOREBOARD_STARTING) {
        ap_scoreboard_image->parent[slot].generation = retained->mpm->my_generation;
    }
}

void peruser_shim_other_child_exited(int pid, int status)
{
    apr_proc_t proc;
    proc.pid = pid;
    apr_proc_other_child_alert(&proc, APR_OC_REASON_DEATH, status);
}

void peruser_shim_monitor(void)
{
    ap_run_monitor(peruser_pconf, ap_server_conf);
    apr_proc_other_child_refresh_all(APR_OC_REASON_RUNNING);
}

int peruser_shim_pending(void)
{
    return (retained->mpm->restart_pending ? PERUSER_PENDING_RESTART : 0)
        | (retained->mpm->shutdown_pending ? PERUSER_PENDING_SHUTDOWN : 0);
}

/* mod_mpm_peruser: the module, its hooks, the configuration pass and the run hook.
 *
 * Processes: the root parent supervises only. Multiplexers (MultiplexerUser) accept, peek at
 * the request head, find the vhost with Apache's own rules and pass the socket over the vhost's
 * environment channel. Workers (the environment's user) serve it with ap_process_connection and
 * hand a kept-alive connection back when its next request belongs to another environment. All
 * of that is Swift (Sources/PeruserModule); this file is the table of contents Apache reads. */
#include "peruser.h"
#include "http_core.h"
#include "http_main.h"
#include "http_protocol.h"
#include "mod_status.h"
#include "scoreboard.h"
#include "ap_listen.h"
#include "apr_strings.h"

#include <errno.h>
#include <signal.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

peruser_settings peruser_current_settings;

static ap_unixd_mpm_retained_data *mpm;
/* Set by signals in a child: SIGUSR1 asks it to exit when done; SIGWINCH asks a worker to drain
 * its channel first (its generation's multiplexers are gone). */
static volatile sig_atomic_t retire_requested, drain_requested;
/* Set by SIGCHLD in the root parent: a child exited since it last reaped. */
static volatile sig_atomic_t children_exited;

#define DEFAULT_MAX_REQUESTS_PER_CHILD 1000

static int pre_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp)
{
    int count;
    const char *const *names = peruser_directives_stored_names(&count);
    mpm = ap_unixd_mpm_get_retained_data();
    peruser_directives_reset(p);
    return peruser_pre_config(p, names, count, &peruser_current_settings);
}

/* Core's pre_config resets MaxConnectionsPerChild to 0 (unlimited); Peruser's default is
 * 1000, and core's own directive (or MaxRequestsPerChild) still overrides it. */
static int pre_config_after_core(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp)
{
    ap_max_requests_per_child = DEFAULT_MAX_REQUESTS_PER_CHILD;
    return OK;
}

static int check_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    int count;
    peruser_directive *directives = peruser_directives_stored(&count);
    return peruser_configure(directives, count, &peruser_current_settings) ? !OK : OK;
}

static int open_logs(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    if (peruser_is_image()) {
        return OK; /* workers get their connections from the multiplexers */
    }
    if (ap_setup_listeners(ap_server_conf) < 1) {
        int startup = mpm->module_loads == 1;
        ap_log_error(APLOG_MARK, APLOG_ALERT | (startup ? APLOG_STARTUP : 0), 0, startup ? NULL : s,
                     "no listening sockets available, shutting down");
        return !OK;
    }
    return OK;
}

static int post_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    peruser_post_config(p, s);
    return OK;
}

static int run_hook(apr_pool_t *pconf, apr_pool_t *plog, server_rec *s)
{
    return peruser_run(pconf, plog, s);
}

static const char *get_name(void)
{
    return "peruser";
}

static int status_hook(request_rec *r, int flags)
{
    peruser_status(r, flags & AP_STATUS_SHORT, r->args && ap_strstr_c(r->args, "peruser_stats"));
    return OK;
}

static void on_retire(int sig)
{
    retire_requested = 1;
    mpm->mpm_state = AP_MPMQ_STOPPING; /* httpd's keep-alive loop then ends after this request */
}

static void on_drain(int sig)
{
    drain_requested = 1;
    mpm->mpm_state = AP_MPMQ_STOPPING;
}

static void on_child_exit(int sig)
{
    children_exited = 1;
}

void peruser_shim_watch_children(int watch)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = watch ? on_child_exit : SIG_DFL;
    sigaction(SIGCHLD, &sa, NULL); /* no SA_RESTART: the exit interrupts the parent's poll */
    children_exited = watch;       /* look once: children may have exited before */
}

int peruser_shim_children_exited(void)
{
    return __atomic_exchange_n(&children_exited, 0, __ATOMIC_SEQ_CST) != 0;
}

pid_t peruser_shim_fork_for_root(void)
{
    sigset_t all, saved;
    /* Written by the go-between, which runs on this process's memory until it exits. */
    volatile pid_t child = -EIO;
    pid_t between;
    int status;

    sigfillset(&all);
    if (sigprocmask(SIG_SETMASK, &all, &saved) != 0)
        return -errno;
    between = vfork();
    if (between == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            /* The child, with a copy of the memory as it was: it goes on in the caller. */
            sigprocmask(SIG_SETMASK, &saved, NULL);
            return 0;
        }
        child = pid < 0 ? -errno : pid;
        _exit(0);
    }
    if (between < 0)
        child = -errno;
    else
        while (waitpid(between, &status, 0) < 0 && errno == EINTR)
            ;
    sigprocmask(SIG_SETMASK, &saved, NULL);
    return child;
}

void peruser_shim_after_fork(void)
{
    struct sigaction sa;
#if AP_HAS_THREAD_LOCAL
    ap_thread_current_after_fork();
#endif
    /* No SA_RESTART: a worker blocked on its channel must wake up to these. */
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_retire;
    sigaction(AP_SIG_GRACEFUL, &sa, NULL);
    sa.sa_handler = on_drain;
    sigaction(AP_SIG_GRACEFUL_STOP, &sa, NULL);
}

int peruser_shim_child_main_thread(void *pool)
{
#if AP_HAS_THREAD_LOCAL
    apr_thread_t *thread = NULL;
    return ap_thread_main_create(&thread, pool) == APR_SUCCESS ? 0 : -1;
#else
    return 0;
#endif
}

int peruser_shim_stop_requested(void)
{
    return retire_requested || drain_requested;
}

int peruser_shim_drain_requested(void)
{
    return drain_requested;
}

void peruser_shim_log(int level, const char *message)
{
    ap_log_error(APLOG_MARK, level, 0, ap_server_conf, "%s", message);
}

void peruser_shim_log_startup(int level, const char *message)
{
    ap_log_error(APLOG_MARK, level | APLOG_STARTUP, 0, NULL, "peruser: %s", message);
}

static void peruser_hooks(apr_pool_t *p)
{
    static const char *const core[] = { "core.c", NULL };

    peruser_refuse_other_mpms();
    ap_hook_open_logs(open_logs, NULL, core, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_config(pre_config, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_config(pre_config_after_core, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_check_config(check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(post_config, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_mpm(run_hook, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_mpm_query(peruser_mpm_query, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_mpm_get_name(get_name, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, status_hook, NULL, NULL, APR_HOOK_MIDDLE);
    peruser_register_connection_hooks();
}

AP_DECLARE_MODULE(mpm_peruser) = {
    MPM20_MODULE_STUFF,
    NULL,                         /* hook to run before apache parses args */
    NULL,                         /* create per-directory config structure */
    NULL,                         /* merge per-directory config structures */
    peruser_create_server_config, /* create per-server config structure */
    peruser_merge_server_config,  /* merge per-server config structures */
    peruser_commands,             /* command table */
    peruser_hooks                 /* register hooks */
};

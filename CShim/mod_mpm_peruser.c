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

#include <dlfcn.h>
#include <strings.h>

peruser_retained *peruser_retained_data;
apr_pool_t *peruser_pconf;
peruser_settings peruser_current_settings;

static int one_process;
/* The loaded module that is not thread-safe, for which HTTP/2 was switched off (post_config). */
static const char *h2_switched_off_for;

#define retained peruser_retained_data
#define DEFAULT_MAX_REQUESTS_PER_CHILD 1000

static int startup_pass(void)
{
    return retained->mpm->module_loads == 1;
}

static int refuse(const char *message)
{
    ap_log_error(APLOG_MARK, APLOG_CRIT | (startup_pass() ? APLOG_STARTUP : 0), 0, NULL, "peruser: %s", message);
    return !OK;
}

static int peruser_pre_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp)
{
    int foreground, count;
    const char *const *names = peruser_directives_stored_names(&count);
    char error[512];

    one_process = ap_exists_config_define("ONE_PROCESS") || ap_exists_config_define("DEBUG");
    foreground = one_process || ap_exists_config_define("FOREGROUND");
    retained = ap_retained_data_get("mpm_peruser_v3");
    if (!retained) {
        retained = ap_retained_data_create("mpm_peruser_v3", sizeof(*retained));
        retained->mpm = ap_unixd_mpm_get_retained_data();
        retained->lasting = ap_retained_data_create("mpm_peruser_lasting_v3", sizeof(peruser_lasting));
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
        rv = apr_proc_detach(ap_exists_config_define("NO_DETACH") ? APR_PROC_DETACH_FOREGROUND
                                                                  : APR_PROC_DETACH_DAEMONIZE);
        if (rv != APR_SUCCESS) {
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, NULL, "apr_proc_detach failed");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    ap_listen_pre_config();
    peruser_directives_reset(p);
    if (peruser_directives_check(names, count, error, sizeof error) != 0
        || peruser_configure(NULL, 0, NULL, 0, NULL, &peruser_current_settings, error, sizeof error) != 0) {
        return refuse(error);
    }
    return OK;
}

/* Core's pre_config resets MaxConnectionsPerChild to 0 (unlimited); Peruser's default is
 * 1000, and core's own directive (or MaxRequestsPerChild) still overrides it. */
static int peruser_pre_config_after_core(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp)
{
    ap_max_requests_per_child = DEFAULT_MAX_REQUESTS_PER_CHILD;
    return OK;
}

/* Where mod_unixd's User or Group was set, for messages. */
static const char *located(apr_pool_t *p, const char *name)
{
    const ap_directive_t *d;
    for (d = ap_conftree; d; d = d->next) {
        if (!strcasecmp(d->directive, name)) {
            return apr_psprintf(p, "line %d of %s", d->line_num, d->filename);
        }
    }
    return "the default";
}

static int peruser_check_config(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    peruser_unixd_identity unixd = { ap_unixd_config.user_name, (uint32_t)ap_unixd_config.user_id,
                                     (uint32_t)ap_unixd_config.group_id, located(ptemp, "User"),
                                     located(ptemp, "Group") };
    int count;
    const peruser_directive *directives = peruser_directives_stored(&count);
    char error[2048];
    server_rec *vh;

    if (one_process) {
        return refuse("ONE_PROCESS/DEBUG mode is not supported: a root process must never serve connections");
    }
    if (ap_unixd_config.chroot_dir) {
        return refuse(apr_psprintf(ptemp, "ChrootDir %s is not supported by this MPM (it would confine only the "
                                   "multiplexers); use Chroot inside <Processor> for workers and MultiplexerChroot "
                                   "for multiplexers", ap_unixd_config.chroot_dir));
    }
    if (peruser_configure(directives, count, &unixd, startup_pass(), peruser_directives_environments(),
                          &peruser_current_settings, error, sizeof error) != 0) {
        return refuse(error);
    }
    for (vh = s->next; startup_pass() && vh; vh = vh->next) {
        if (peruser_server_environment(vh) < 0) {
            ap_log_error(APLOG_MARK, APLOG_WARNING | APLOG_STARTUP, 0, NULL,
                         "peruser: virtual host %s has no ServerEnvironment (and the main server has none to "
                         "inherit); its requests will be answered with 503", peruser_vhost_description(ptemp, vh));
        }
    }
    return OK;
}

static int peruser_open_logs(apr_pool_t *p, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    peruser_pconf = p;
    if (ap_setup_listeners(ap_server_conf) < 1) {
        ap_log_error(APLOG_MARK, APLOG_ALERT | (startup_pass() ? APLOG_STARTUP : 0), 0,
                     startup_pass() ? NULL : s, "no listening sockets available, shutting down");
        return !OK;
    }
    return OK;
}

/* A loaded module that must never run two requests at once in one process, or NULL. PHP says
 * so by its build: a thread-safe (ZTS) PHP exports TSRM's tsrm_startup, Debian's does not. */
static const char *thread_unsafe_module(void)
{
    module *m;
    for (m = ap_top_module; m; m = m->next) {
        if (!strncmp(m->name, "mod_php", 7) && !dlsym(RTLD_DEFAULT, "tsrm_startup")) {
            return "mod_php (built without thread safety, as Debian's is)";
        }
        if (!strcmp(m->name, "mod_perl.c") || !strcmp(m->name, "mod_python.c")) {
            return !strcmp(m->name, "mod_perl.c") ? "mod_perl" : "mod_python";
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

static void on_child_exit(int sig)
{
    /* Interrupts the parent's poll. */
}

static int peruser_run(apr_pool_t *pconf, apr_pool_t *plog, server_rec *s)
{
    ap_unixd_mpm_retained_data *mpm = retained->mpm;
    int slots = peruser_current_settings.server_limit;
    struct sigaction sa;

    ap_log_pid(pconf, ap_pid_fname);
    if (!mpm->was_graceful) {
        retained->lasting->scoreboard_slots = slots;
        if (ap_run_pre_mpm(s->process->pool, SB_SHARED) != OK) {
            mpm->mpm_state = AP_MPMQ_STOPPING;
            return !OK;
        }
        ap_scoreboard_image->global->running_generation = mpm->my_generation;
    }
    else if (slots != retained->lasting->scoreboard_slots) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, "peruser: changing ServerLimit to %d needs a full restart; "
                     "keeping %d", slots, retained->lasting->scoreboard_slots);
    }
    ap_unixd_mpm_set_signals(pconf, one_process);
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_child_exit;
    sigaction(SIGCHLD, &sa, NULL);

    if (peruser_parent_begin(retained->lasting, retained->lasting->scoreboard_slots, (uint32_t)mpm->my_generation,
                             mpm->was_graceful) != 0) {
        mpm->mpm_state = AP_MPMQ_STOPPING;
        return !OK;
    }
    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf, "%s configured -- resuming normal operations",
                 ap_get_server_description());
    if (h2_switched_off_for && !mpm->was_graceful) {
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

    mpm->mpm_state = AP_MPMQ_RUNNING;
    peruser_parent_run();
    mpm->mpm_state = AP_MPMQ_STOPPING;
    peruser_parent_end_generation();

    if (mpm->shutdown_pending && mpm->is_ungraceful) {
        peruser_parent_stop_children();
        ap_remove_pid(pconf, ap_pid_fname);
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf, "caught SIGTERM, shutting down");
        return DONE;
    }
    if (mpm->shutdown_pending) {
        ap_close_listeners();
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf,
                     "caught " AP_SIG_GRACEFUL_STOP_STRING ", shutting down gracefully");
        mpm->shutdown_pending = 0; /* a second stop signal cuts the drain short */
        peruser_parent_graceful_stop(ap_graceful_shutdown_timeout);
        ap_remove_pid(pconf, ap_pid_fname);
        return DONE;
    }
    if (mpm->is_ungraceful) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf, "SIGHUP received.  Attempting to restart");
        peruser_parent_stop_children();
    }
    else {
        /* Children of this generation finish what they hold; the next generation's
         * supervisor retires them (multiplexers first, then workers drain). */
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, ap_server_conf, "Graceful restart requested, doing restart");
    }
    ++mpm->my_generation;
    ap_scoreboard_image->global->running_generation = mpm->my_generation;
    return OK;
}

static int peruser_query(int query_code, int *result, apr_status_t *rv)
{
    const peruser_settings *settings = &peruser_current_settings;
    *rv = APR_SUCCESS;
    switch (query_code) {
    case AP_MPMQ_MAX_DAEMON_USED:
        *result = peruser_parent_slots_in_use();
        break;
    case AP_MPMQ_IS_THREADED:
        *result = AP_MPMQ_NOT_SUPPORTED;
        break;
    case AP_MPMQ_IS_FORKED:
        *result = AP_MPMQ_DYNAMIC;
        break;
    case AP_MPMQ_HARD_LIMIT_DAEMONS:
        *result = retained && retained->lasting->scoreboard_slots ? retained->lasting->scoreboard_slots
                                                                  : settings->server_limit;
        break;
    case AP_MPMQ_MAX_DAEMONS:
        *result = settings->max_clients;
        break;
    case AP_MPMQ_HARD_LIMIT_THREADS:
    case AP_MPMQ_MAX_THREADS:
        *result = 1;
        break;
    case AP_MPMQ_MIN_SPARE_DAEMONS:
        *result = settings->min_spare;
        break;
    case AP_MPMQ_MAX_SPARE_DAEMONS:
        *result = settings->max_spare;
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

/* mod_status's extension hook: Peruser's table under mod_status's own, ?peruser_stats for the
 * environments, and Peruser lines in ?auto. */
static int peruser_status_hook(request_rec *r, int flags)
{
    int slots = retained->lasting->scoreboard_slots, i;
    int32_t *states;

    if (slots > PERUSER_MOST_SLOTS || slots < 0) {
        slots = slots < 0 ? 0 : PERUSER_MOST_SLOTS;
    }
    states = apr_palloc(r->pool, sizeof(int32_t) * (slots ? slots : 1));
    for (i = 0; i < slots; i++) {
        worker_score *ws = ap_get_scoreboard_worker_from_indexes(i, 0);
        states[i] = ws ? ws->status : SERVER_DEAD;
    }
    peruser_status_render((flags & AP_STATUS_SHORT) ? PERUSER_STATUS_VIEW_AUTO
                          : (r->args && ap_strstr_c(r->args, "peruser_stats")) ? PERUSER_STATUS_VIEW_STATISTICS
                          : PERUSER_STATUS_VIEW_CHILDREN, states, slots, r);
    return OK;
}

void peruser_shim_emit(void *ctx, const char *data, size_t len)
{
    ap_rwrite(data, (int)len, (request_rec *)ctx);
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
    ap_hook_open_logs(peruser_open_logs, NULL, core, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_config(peruser_pre_config, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_config(peruser_pre_config_after_core, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_check_config(peruser_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(peruser_post_config, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_mpm(peruser_run, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_mpm_query(peruser_query, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_mpm_get_name(peruser_get_name, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, peruser_status_hook, NULL, NULL, APR_HOOK_MIDDLE);
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

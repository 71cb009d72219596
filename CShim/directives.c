/* The command table. Setters check only where a directive may appear (Apache's business) and
 * store it as written; Configuration.build (Swift) reads the stored list once, in order, at
 * check_config, and names the line of any problem. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr */
#endif
#include <dlfcn.h>
#include "peruser.h"
#include "http_core.h"
#include "apr_strings.h"

#include <strings.h>

typedef struct {
    int directive; /* index of this server's ServerEnvironment or AssignUserID, or -1 */
} peruser_server_conf;

static apr_array_header_t *stored;
/* cmd_data of the directives stored for Configuration.build. */
static char stored_marker[] = "stored";

void peruser_directives_reset(apr_pool_t *p)
{
    stored = apr_array_make(p, 64, sizeof(peruser_directive));
}

peruser_directive *peruser_directives_stored(int *count)
{
    *count = stored ? stored->nelts : 0;
    return stored ? (peruser_directive *)stored->elts : NULL;
}

static int store(const ap_directive_t *d, const char *name, const char *first, const char *second, int section)
{
    peruser_directive *entry = apr_array_push(stored);
    entry->name = name;
    entry->arguments[0] = first;
    entry->arguments[1] = second;
    entry->file = d ? d->filename : "(command line)";
    entry->line = d ? d->line_num : 0;
    entry->section = section;
    entry->environment = -1;
    return stored->nelts - 1;
}

static const char *store_global(cmd_parms *cmd, void *dummy, const char *first, const char *second)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    if (!err) {
        store(cmd->directive, cmd->cmd->name, first, second, -1);
    }
    return err;
}

static const char *store_global_one(cmd_parms *cmd, void *dummy, const char *first)
{
    return store_global(cmd, dummy, first, NULL);
}

static const char *store_global_flag(cmd_parms *cmd, void *dummy, int on)
{
    return store_global(cmd, dummy, on ? "On" : "Off", NULL);
}

/* <Processor name> ... </Processor>: the block's own directives are stored from the parsed
 * tree, so that User and Group inside it never reach mod_unixd. */
static const char *processor_section(cmd_parms *cmd, void *dummy, const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY), *endp;
    const ap_directive_t *d;
    char *args, *name;
    int section;

    if (err) {
        return err;
    }
    if (!(endp = ap_strrchr_c(arg, '>'))) {
        return "<Processor> directive missing closing '>'";
    }
    args = apr_pstrndup(cmd->temp_pool, arg, endp - arg);
    name = ap_getword_conf(cmd->pool, (const char **)&args);
    if (!*name || *args) {
        return "<Processor> takes exactly one name, as in <Processor alice>";
    }
    section = store(cmd->directive, "<Processor", name, NULL, -1);
    for (d = cmd->directive->first_child; d; d = d->next) {
        const char *rest = d->args, *value = ap_getword_conf(cmd->pool, &rest);
        store(d, d->directive, value, *rest ? rest : NULL, section);
    }
    return NULL;
}

/* ServerEnvironment and AssignUserID: in a <VirtualHost>, or in the server config for the main
 * server (and, by the usual merge, every vhost that names none); one of them, once. */
static const char *store_server_environment(cmd_parms *cmd, void *dummy, const char *first, const char *second)
{
    peruser_server_conf *conf = ap_get_module_config(cmd->server->module_config, &mpm_peruser_module);
    const char *err = ap_check_cmd_context(cmd, NOT_IN_DIR_CONTEXT);
    if (err) {
        return err;
    }
    if (conf->directive >= 0) {
        return second ? "AssignUserID and ServerEnvironment (or a second AssignUserID) are both given for this "
                        "server; keep one"
             : cmd->server->is_virtual ? "ServerEnvironment is given twice for this virtual host (or after AssignUserID)"
                                       : "ServerEnvironment is given twice for the main server (or after AssignUserID)";
    }
    conf->directive = store(cmd->directive, cmd->cmd->name, first, second, -1);
    return NULL;
}

static const char *store_server_environment_one(cmd_parms *cmd, void *dummy, const char *name)
{
    return store_server_environment(cmd, dummy, name, NULL);
}

void *peruser_create_server_config(apr_pool_t *p, server_rec *s)
{
    peruser_server_conf *conf = apr_pcalloc(p, sizeof *conf);
    conf->directive = -1;
    return conf;
}

/* A vhost that names no environment is served by the main server's, if it has one. */
void *peruser_merge_server_config(apr_pool_t *p, void *base_conf, void *virt_conf)
{
    const peruser_server_conf *base = base_conf, *virt = virt_conf;
    peruser_server_conf *merged = apr_pcalloc(p, sizeof *merged);
    merged->directive = virt->directive >= 0 ? virt->directive : base->directive;
    return merged;
}

int peruser_shim_server_environment(const void *server)
{
    const peruser_server_conf *conf = ap_get_module_config(((const server_rec *)server)->module_config,
                                                           &mpm_peruser_module);
    return conf && stored && conf->directive >= 0 && conf->directive < stored->nelts
        ? ((peruser_directive *)stored->elts)[conf->directive].environment : -1;
}

const char *peruser_shim_vhost_description(void *pool, const void *server)
{
    apr_pool_t *p = pool;
    const server_rec *s = server;
    const server_addr_rec *addr = s->addrs;
    return apr_psprintf(p, "%s (<VirtualHost %s:%u> on line %u of %s)",
                        s->server_hostname ? s->server_hostname : "(no ServerName)",
                        addr && addr->virthost ? addr->virthost : "*",
                        addr ? (unsigned)addr->host_port : (unsigned)s->port,
                        s->defn_line_number, s->defn_name ? s->defn_name : "(main config)");
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

static const char *stray_processor_end(cmd_parms *cmd, void *dummy, const char *arg)
{
    return "</Processor> without matching <Processor> section";
}

#define STORED(name, help) AP_INIT_TAKE1(name, store_global_one, stored_marker, RSRC_CONF, help)
#define PER_REQUEST_ID "identities chosen per request would need a worker per request; give each site a " \
                       "<Processor> and a ServerEnvironment"

const command_rec peruser_commands[] = {
    LISTEN_COMMANDS,
    STORED("ServerLimit", "Child slots: the hard limit of MaxClients (default 256)"),
    STORED("MaxClients", "Most children alive at once (default 256)"),
    STORED("MaxRequestWorkers", "httpd 2.4's name for MaxClients"),
    STORED("MinProcessors", "Workers kept per environment (default 0)"),
    STORED("MaxProcessors", "Most workers per environment (default 10)"),
    STORED("MinSpareProcessors", "Idle workers kept per environment in use (default 2)"),
    STORED("MaxSpareProcessors", "Most idle workers per environment; 0: no limit (default 0)"),
    STORED("MinMultiplexers", "Multiplexers kept (default 3)"),
    STORED("MaxMultiplexers", "Most multiplexers (default 10)"),
    STORED("MultiplexerIdleTimeout", "Seconds before an idle extra multiplexer exits; 0: never"),
    STORED("ExpireTimeout", "Seconds a worker may spend on one request; 0: no limit (default 1800)"),
    STORED("IdleTimeout", "Seconds before an idle spare worker exits; 0: never (default 900)"),
    STORED("MultiplexerHeadTimeout", "Seconds a multiplexer waits for a complete request head (default 5)"),
    STORED("MultiplexerMaxConnections", "Connections one multiplexer holds at most (default 512)"),
    STORED("MaxClientShare", "Percent of an environment's MaxProcessors one client address may hold; 100: no limit (default 50)"),
    STORED("ReaderShedTimeout", "Seconds a worker waits on its client in a request while connections wait for its "
                                "environment; 0: never shed (default 1)"),
    STORED("MultiplexerUser", "The user the multiplexers run as (default: User); never a tenant's"),
    STORED("MultiplexerGroup", "The group the multiplexers run as (default: Group); never a tenant's"),
    STORED("MultiplexerChroot", "A root-owned directory the multiplexers chroot into before they drop privileges"),
    AP_INIT_TAKE12("ProcessorWaitTimeout", store_global, stored_marker, RSRC_CONF,
                   "Seconds a connection waits for a busy environment, and the availability levels"),
    AP_INIT_FLAG("PeruserHandBack", store_global_flag, stored_marker, RSRC_CONF,
                 "On (default): a kept-alive connection moves to the environment of its next request; "
                 "Off: such a request gets 421 and the connection closes"),
    AP_INIT_TAKE12("ProcessorImage", store_global, stored_marker, RSRC_CONF,
                   "isolated (default): each environment's workers start from a process image that loaded only "
                   "its own virtual hosts; shared: every worker is forked from the root parent"),
    AP_INIT_FLAG("ProcessorImageZygote", store_global_flag, stored_marker, RSRC_CONF,
                 "On (default): isolated images are forked from one zygote that loaded the modules once (they "
                 "share its address layout, stack canary and pointer guard); Off: each image is an apache2 "
                 "executed on its own"),
    AP_INIT_RAW_ARGS("<Processor", processor_section, stored_marker, RSRC_CONF,
                     "Declares a server environment: <Processor name> User u, Group g </Processor>"),
    AP_INIT_RAW_ARGS("</Processor>", stray_processor_end, NULL, RSRC_CONF, "Ends a <Processor> section"),
    AP_INIT_ITERATE("StatusEnvironment", store_global_one, stored_marker, RSRC_CONF,
                    "<Processor> environments whose workers see every worker's request, vhost and client in the "
                    "child table and on the status page (as the main server's environment does)"),
    AP_INIT_TAKE1("ServerEnvironment", store_server_environment_one, stored_marker, RSRC_CONF,
                  "The server environment (<Processor> name) that serves this virtual host"),
    AP_INIT_TAKE2("AssignUserID", store_server_environment, stored_marker, RSRC_CONF,
                  "mpm-itk's: the user and group this virtual host is served as (an implicit environment)"),
    AP_INIT_RAW_ARGS("AssignUserIDExpr", itk_unsupported, PER_REQUEST_ID, RSRC_CONF | ACCESS_CONF, "not supported"),
    AP_INIT_RAW_ARGS("AssignGroupIDExpr", itk_unsupported, PER_REQUEST_ID, RSRC_CONF | ACCESS_CONF, "not supported"),
    AP_INIT_RAW_ARGS("MaxClientsVHost", itk_unsupported,
                     "limit workers per environment with MaxProcessors inside <Processor> (or globally)",
                     RSRC_CONF, "not supported"),
    AP_INIT_RAW_ARGS("NiceValue", itk_unsupported,
                     "NiceValue belongs inside <Processor>, where it applies to that environment's workers",
                     RSRC_CONF, "not supported here"),
    AP_INIT_RAW_ARGS("LimitUIDRange", itk_not_needed, NULL, RSRC_CONF, "accepted; no effect"),
    AP_INIT_RAW_ARGS("LimitGIDRange", itk_not_needed, NULL, RSRC_CONF, "accepted; no effect"),
    AP_GRACEFUL_SHUTDOWN_TIMEOUT_COMMAND,
    { NULL }
};

const char *const *peruser_directives_stored_names(int *count)
{
    static const char *names[64];
    const command_rec *c;
    for (*count = 0, c = peruser_commands; c->name && *count < 64; c++) {
        if (c->cmd_data == stored_marker) {
            names[(*count)++] = c->name;
        }
    }
    return names;
}

int peruser_shim_loaded_module(int index, const char **file, const char **symbol)
{
    Dl_info info;
    int i;
    for (i = 0; i < index; i++) {
        if (!ap_loaded_modules[i]) return 0;
    }
    if (!ap_loaded_modules[index]) return 0;
    *file = NULL;
    *symbol = NULL;
    if (dladdr(ap_loaded_modules[index], &info) && info.dli_fname && info.dli_sname) {
        Dl_info self;
        /* Linked into httpd: the main program's own file. */
        if (!(dladdr((void *)&ap_loaded_modules, &self) && self.dli_fname
              && strcmp(self.dli_fname, info.dli_fname) == 0)) {
            *file = info.dli_fname;
            *symbol = info.dli_sname;
        }
    }
    return 1;
}

const char *peruser_shim_directive_module(const char *name)
{
    module *owner = NULL;
    Dl_info info;
    if (!name || !ap_find_command_in_modules(name, &owner) || !owner) return NULL;
    if (!dladdr(owner, &info) || !info.dli_sname) return NULL;
    return info.dli_sname;
}

int peruser_shim_drop_post_config(const char *symbol)
{
    apr_array_header_t *hooks = ap_hook_get_post_config();
    ap_LINK_post_config_t *links;
    const char *file = NULL, *found, *name;
    Dl_info info;
    int i, kept = 0, dropped = 0;
    /* Its shared object (a module linked into httpd has none of its own). */
    for (i = 0; !file && peruser_shim_loaded_module(i, &found, &name); i++) {
        if (found && strcmp(name, symbol) == 0) file = found;
    }
    if (!file || !hooks) return 0;
    links = (ap_LINK_post_config_t *)hooks->elts;
    for (i = 0; i < hooks->nelts; i++) {
        if (dladdr((void *)links[i].pFunc, &info) && info.dli_fname && strcmp(info.dli_fname, file) == 0) {
            dropped++;
        } else {
            links[kept++] = links[i];
        }
    }
    hooks->nelts = kept;
    return dropped;
}

const char *peruser_shim_runtime_dir(void *pool)
{
    return ap_runtime_dir_relative(pool, "");
}

/* The C shim of mod_mpm_peruser: what is shared between its files. The shim holds only what
 * Apache's API or a C macro demands; the MPM itself is Swift (Sources/PeruserModule), reached
 * through peruser_swift.h, and calls back through Sources/CPeruserShim/peruser_shim.h.
 *
 *   mod_mpm_peruser.c  the module struct (the file's name is the module's name, as in
 *                      <IfModule mod_mpm_peruser.c>), hooks, the configuration pass, the run
 *                      hook, ap_mpm_query, the status hook
 *   directives.c       the command table: setters store the directives as written
 *   connection.c       a worker's connection: the head-recording filter, the pausable socket
 *                      bucket, the hand-back, and the gates that keep other environments out */
#ifndef PERUSER_H
#define PERUSER_H

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "unixd.h"
#include "scoreboard.h"

#include "peruser_shim.h"
#include "peruser_swift.h"

extern module AP_MODULE_DECLARE_DATA mpm_peruser_module;

/* What C reads of the configuration, filled by peruser_configure (mod_mpm_peruser.c). */
extern peruser_settings peruser_current_settings;

/* directives.c */
extern const command_rec peruser_commands[];
void peruser_directives_reset(apr_pool_t *p);
/* The stored directives; after check_config with each one's environment (or -1). */
peruser_directive *peruser_directives_stored(int *count);
/* Names of the directives the command table stores (for peruser_directives_check). */
const char *const *peruser_directives_stored_names(int *count);
void *peruser_create_server_config(apr_pool_t *p, server_rec *s);
void *peruser_merge_server_config(apr_pool_t *p, void *base, void *virt);

/* connection.c */
void peruser_register_connection_hooks(void);

#endif

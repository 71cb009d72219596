/* Every entry point from the C shim into Swift (Sources/PeruserModule, @_cdecl). Strings go in
 * as NUL-terminated C strings and come out copied into caller buffers; Swift keeps its own
 * state and never hands out pointers into it. The build checks these prototypes against the
 * Swift functions. */
#ifndef PERUSER_SWIFT_H
#define PERUSER_SWIFT_H

#include <stddef.h>
#include <stdint.h>
#include "peruser_shim.h"

/* ---- Configuration (Configuration/ConfigurationEntry.swift) ---- */

/* Whether the C command table stores exactly the directives Configuration.build reads
 * (`names`: the table's stored directives). 0, or -1 with the difference in `error`. */
int peruser_directives_check(const char *const *names, int32_t count, char *error, size_t error_cap);

/* Builds this pass's configuration from the stored directives, in order, and checks it
 * against mod_unixd's identity (`unixd`; NULL: not yet known, before the configuration is
 * read). Fills `environment_of` (`count` entries: the environment of each ServerEnvironment or
 * AssignUserID, -1 for other directives) and `settings`. Warnings are logged when `startup`.
 * 0, or -1 with the first problem in `error`. */
int peruser_configure(const peruser_directive *directives, int32_t count, const peruser_unixd_identity *unixd,
                      int32_t startup, int32_t *environment_of, peruser_settings *settings,
                      char *error, size_t error_cap);

/* ---- Parent (Parent/) ---- */

/* Starts generation `generation` (`was_graceful`: after a graceful restart, whose children
 * still run): channels, the child table, the multiplexers' state, the records. 0, or -1
 * (logged). */
int peruser_parent_begin(peruser_lasting *lasting, int32_t slots, uint32_t generation, int32_t was_graceful);

/* Supervises until a restart or a stop is asked for (peruser_shim_pending). */
void peruser_parent_run(void);

/* Ends this generation's channels (the hand-back receiving ends stay one generation more). */
void peruser_parent_end_generation(void);

/* Stops every child: SIGTERM, then SIGKILL after a grace period. */
void peruser_parent_stop_children(void);

/* Graceful stop: multiplexers first, then workers drain their channels, within `timeout_s`
 * seconds (0: as long as it takes, or until a second stop signal); then the rest is stopped. */
void peruser_parent_graceful_stop(int32_t timeout_s);

/* One past the highest slot in use (ap_mpm_query). */
int32_t peruser_parent_slots_in_use(void);

/* ---- Worker (Worker/) ---- */

/* A worker started serving a request of its own environment (request line and vhost name are
 * kept for ExpireTimeout's log line and the status page). */
void peruser_worker_started_request(const char *request, const char *vhost);

/* Gives the connection being served back to the multiplexers, with the `len` bytes read of it
 * so far; `requests_served` on it by this worker decides the hop count. 0, or -errno. */
int32_t peruser_worker_hand_back(const unsigned char *consumed, size_t len, int32_t requests_served);

/* ---- Status page (Status/) ---- */

#define PERUSER_STATUS_VIEW_CHILDREN 0
#define PERUSER_STATUS_VIEW_STATISTICS 1
#define PERUSER_STATUS_VIEW_AUTO 2

/* Renders one view from this generation's table; `scoreboard_states` gives Apache's state of
 * each of `slots` slots. Output goes to peruser_shim_emit(ctx, ...). */
void peruser_status_render(int32_t view, const int32_t *scoreboard_states, int32_t slots, void *ctx);

/* ---- Log lines a client or tenant can cause (rate-limited) ---- */

#define PERUSER_NOISY_NO_ENVIRONMENT 100

/* Whether a line of kind `kind` may be written now: -1 if not, or how many such lines were
 * left out since the last one written. */
long peruser_log_admit(int32_t kind);

/* The largest hand-back message: what a worker may have consumed of a connection. */
#define PERUSER_CONSUMED_MAX (96 * 1024)

#endif

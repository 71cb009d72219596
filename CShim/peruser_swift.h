/* Every entry point from the C shim into Swift (Sources/PeruserModule, @_cdecl). Strings go in
 * as NUL-terminated C strings and come out copied into caller buffers; Swift keeps its own
 * state and never hands out pointers into it. The build checks these prototypes against the
 * Swift functions. */
#ifndef PERUSER_SWIFT_H
#define PERUSER_SWIFT_H

#include <stddef.h>
#include <stdint.h>
#include "peruser_shim.h"

struct apr_pool_t;

/* ---- The configuration pass (Apache/ConfigurationHooks.swift) ---- */

/* At module load: httpd refuses a second MPM ("More than one MPM loaded"); say which one and how
 * to remove it on Debian, where a module package (mod_php) may have enabled prefork. */
void peruser_refuse_other_mpms(void);

/* pre_config: graceful restart or not, detaching, the defaults; `stored_names`: the directives
 * the command table stores, compared with Configuration.build's. OK, or what Apache must stop
 * with. */
int32_t peruser_pre_config(struct apr_pool_t *pool, const char *const *stored_names, int32_t count,
                           peruser_settings *settings);

/* check_config: builds this pass's configuration from the stored directives, in order, checks
 * it against mod_unixd's identity and logs what is wrong (warnings at the first start only).
 * Sets the environment of each ServerEnvironment and AssignUserID, and `settings`. 0, or 1
 * when Apache must not start. */
int32_t peruser_configure(peruser_directive *directives, int32_t count, peruser_settings *settings);

/* post_config: notes whether a module that is not thread-safe is loaded beside mod_http2, so
 * that workers run the requests of HTTP/2 streams one at a time (apr_pool_t `pool`, the main
 * server_rec `main`). */
void peruser_post_config(struct apr_pool_t *pool, void *main);

/* 1 in a process image (Image/ImageMain.swift): it listens on nothing. */
int32_t peruser_is_image(void);

/* ---- Hooks (Parent/RunHook.swift, Apache/Query.swift, Status/Status.swift) ---- */

/* The run hook: one generation of the parent (pconf, plog, the main server_rec). OK, DONE, or
 * !OK. */
int32_t peruser_run(struct apr_pool_t *pconf, struct apr_pool_t *plog, void *server);

/* ap_mpm_query (registered as the hook itself: apr_status_t is int). */
int peruser_mpm_query(int code, int *result, int *status);

/* mod_status's hook: Peruser's part of the page for request_rec `request`, `short_report`
 * (?auto) or, with `statistics`, the environments (?peruser_stats). */
void peruser_status(void *request, int32_t short_report, int32_t statistics);

/* ---- Worker (Worker/WorkerMain.swift, Worker/RequestTurns.swift) ---- */

/* The request of an HTTP/2 stream is being created: waits at most `timeout_ms` for the worker's
 * turn. 1: taken (give it back with peruser_request_turn_ends when the request's pool goes);
 * 0: no turn needed (no module that is not thread-safe is loaded); -1: none came in time. */
int32_t peruser_request_turn_begins(int64_t timeout_ms);
void peruser_request_turn_ends(void);

/* The connection being served speaks HTTP/2 (1: its first stream began) or has ended (0): shown
 * per environment on the status page. */
void peruser_worker_speaks_http2(int32_t yes);

/* A worker started serving a request of its own environment (request line and vhost name are
 * kept for ExpireTimeout's log line and the status page). */
void peruser_worker_started_request(const char *request, const char *vhost);

/* Gives the connection being served back to the multiplexers, with the `len` bytes read of it
 * so far; `requests_served` on it by this worker decides the hop count; `keepalives`: its
 * conn_rec's count of responses that kept it alive, which the next worker counts on from.
 * 0, or -errno. */
int32_t peruser_worker_hand_back(const unsigned char *consumed, size_t len, int32_t requests_served,
                                 int32_t keepalives);

/* Whether the head of request_rec `request` (just created, on a kept-alive connection) comes
 * whole within a moment, or the client closed; 0 when the connection should go back to the
 * multiplexers. Reads ahead without consuming. */
int32_t peruser_next_head_arrives(void *request);

/* Whether the kept-alive connection being served has had this worker for its turn while
 * connections wait for the environment (PeruserCore/Scheduling/KeptAliveTurn.swift): 1 when it
 * should give the worker up before its next request. */
int32_t peruser_kept_alive_turn_is_over(void);

/* A worker's blocking read from its client found nothing yet: waits up to `timeout_us` (< 0:
 * no limit) for data on `fd`. Adds the time waited to `*waited_ms` (this request's total so
 * far, with `received` bytes read in it). Returns 0 when there is data, 1 when the timeout ran
 * out, 2 when the connection is shed (its environment has connections waiting and this
 * client has been waited on longer than ReaderShedTimeout allows). */
int32_t peruser_worker_await_client(int32_t fd, int64_t timeout_us, int64_t *waited_ms, uint64_t received);

/* The largest hand-back message: what a worker may have consumed of a connection. */
#define PERUSER_CONSUMED_MAX (96 * 1024)

#endif

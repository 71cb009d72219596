/* Every entry point from the C shim into Swift (Sources/PeruserModule, @_cdecl).
 * Strings go in as NUL-terminated C strings and come out copied into caller buffers; Swift
 * keeps its own state and never hands out pointers into it. */
#ifndef PERUSER_SWIFT_H
#define PERUSER_SWIFT_H

#include <stddef.h>
#include <stdint.h>

/* ---- Configuration (parent, one configuration pass at a time) ---- */

/* Forgets every environment and resets every limit to its default: the start of a pass. */
void peruser_config_reset(void);

/* Declares <Processor name> with its User/Group, limit overrides (-1: not given), Chroot
 * (NULL: none), Cgroup directories and NiceValue (used only if has_nice). The paths are
 * checked here. Returns the environment's index, or -1 with a message in `error`. */
int peruser_config_add_environment(const char *name, const char *user, const char *group,
                                   int min_processors, int max_processors,
                                   int min_spare, int max_spare,
                                   const char *chroot, const char *const *cgroups, int cgroup_count,
                                   int nice, int has_nice, char *error, size_t error_cap);

/* An environment's jail: 1 with the path copied out, 0 for none, -1 on error. */
int peruser_config_environment_chroot(int index, char *buffer, size_t capacity);

/* How many Cgroup directories an environment has, and the `which`-th (0, or -1). */
int peruser_config_environment_cgroup_count(int index);
int peruser_config_environment_cgroup(int index, int which, char *buffer, size_t capacity);

/* 1 with an environment's NiceValue in *nice, 0 if it has none. */
int peruser_config_environment_nice(int index, int *nice);

/* MultiplexerChroot: checked like Chroot; 0, or -1 with a message. */
int peruser_config_set_multiplexer_chroot(const char *path, char *error, size_t error_cap);

/* 1 with MultiplexerChroot copied out, 0 if none is set. */
int peruser_config_multiplexer_chroot(char *buffer, size_t capacity);

/* mpm-itk's AssignUserID: the implicit environment of that user and group (created or
 * reused), or -1 with a message in `error`. */
int peruser_config_assign_user_id(const char *user, const char *group, char *error, size_t error_cap);

/* Index of environment `name`, or -1 with a message in `error`. */
int peruser_config_find_environment(const char *name, char *error, size_t error_cap);

/* Parses a whole number in [low, high] for `directive`. 0 with *value set, or -1 with a message. */
int peruser_config_parse_count(const char *directive, const char *text, int low, int high,
                               int *value, char *error, size_t error_cap);

/* Sets a global limit by directive name (ServerLimit, MaxClients, MinProcessors, ...).
 * 0, or -1 with a message. */
int peruser_config_set_limit(const char *directive, int value, char *error, size_t error_cap);

/* ProcessorWaitTimeout seconds [levels]. */
void peruser_config_set_processor_wait(int seconds, int levels);

/* Checks the limits against each other and the environments. 0, or -1 with a message. */
int peruser_config_validate(char *error, size_t error_cap);

/* Current global values, for ap_mpm_query and the run hook. */
int peruser_config_limit(const char *directive);

int peruser_config_environment_count(void);

/* Copies the environment's name into `buf`. 0, or -1 for a bad index. */
int peruser_config_environment_name(int environment, char *buf, size_t cap);

/* The environment's resolved ids and user name (for initgroups). 0, or -1 for a bad index. */
int peruser_config_environment_identity(int environment, unsigned *uid, unsigned *gid,
                                        char *user, size_t user_cap);

/* ---- The shared child table ---- */

/* Bytes needed for a table of `slots` slots and `environments` environments. */
size_t peruser_table_size(int slots, int environments);

/* The table's page: the unit of a worker's write access. */
size_t peruser_table_page_size(void);

/* Offsets of the two pages the worker in `slot` (of `environment`) may write: its own page in
 * its environment's pool, and the environment's page. 0, or -1. */
int peruser_table_worker_pages(int slot, int environment, size_t *worker_page, size_t *environment_page);

/* Bytes of the multiplexers' own shared state (availability per environment). */
size_t peruser_multiplexer_state_size(int environments);

/* Attaches this generation's multiplexer state (zeroed; every environment starts at 100%). */
void peruser_multiplexer_state_attach(void *state, size_t size);

/* ---- Supervision (parent only) ---- */

/* Starts generation `generation`: formats the shared table at `table` (zeroed, `table_size`
 * bytes) and attaches the private records (retained data, `capacity` entries). `slots` is
 * the number of scoreboard slots. After a graceful restart `previous` is the last
 * generation's table (same slots, `previous_environments` environments), whose counters are
 * carried over by environment name; NULL after a full restart. 0, or -1 with a message. */
int peruser_supervisor_begin(void *records, int capacity, void *table, size_t table_size,
                             int slots, unsigned generation, void *previous, size_t previous_size,
                             int previous_environments, char *error, size_t error_cap);

/* A multiplexer found no idle worker for environment `environment`. */
void peruser_supervisor_demand(int environment);

/* Records that `pid` exited (`stopping`: while the server stops every child). 1 with its slot,
 * environment (-1: multiplexer) and type when it was ours; 0 when it was not one of our children. */
int peruser_supervisor_reaped(int pid, int exited_cleanly, int stopping, long long now_ms, int *slot,
                              int *environment, int *type);

/* One round of maintenance at `now_ms`: start, retire and stop children as the limits say,
 * and let children of older generations finish. */
void peruser_supervisor_maintain(long long now_ms);

/* Graceful stop: multiplexers first, then workers drain their channels. Returns how many
 * children are still alive. */
int peruser_supervisor_drain_all(long long now_ms);

/* Copies the pids of live children into `out` (any generation); returns how many there are. */
int peruser_supervisor_pids(int *out, int cap);

/* One past the highest slot in use. */
int peruser_supervisor_slots_in_use(void);

/* ---- Children: status in the shared table ---- */

#define PERUSER_STATUS_STANDBY 0
#define PERUSER_STATUS_STARTING 1
#define PERUSER_STATUS_READY 2
#define PERUSER_STATUS_ACTIVE 3

void peruser_child_set_status(int slot, int status);

/* A worker took a connection from its channel. */
void peruser_worker_took_connection(int slot, int environment);

/* A worker started serving a request of its own environment (request line and vhost name
 * are kept for ExpireTimeout's log line and the status page). */
void peruser_worker_started_request(int slot, int environment, const char *request, const char *vhost);

/* ---- Status page (in the worker that serves /server-status) ---- */

#define PERUSER_STATUS_VIEW_CHILDREN 0
#define PERUSER_STATUS_VIEW_STATISTICS 1
#define PERUSER_STATUS_VIEW_AUTO 2

/* Renders one view from this generation's table; `scoreboard_states` gives Apache's state of
 * each of `slots` slots. Output goes to peruser_shim_emit(ctx, ...). */
void peruser_status_render(int view, const int *scoreboard_states, int slots, void *ctx);

/* ---- Multiplexer (child, as User/Group) ---- */

/* Runs the accept/peek/route/hand-off loop until asked to stop and done, or a fatal error.
 * Returns the exit status. `handoffs[e]` and `handbacks[e]` are environment e's channel ends
 * (sending, receiving) of generation `generation`; `previous_handbacks` the receiving ends of
 * the previous generation's hand-back channels; `demand` the pipe on which to ask the parent
 * for workers; `secret` the multiplexers' secret page (the key of hand-back tickets);
 * `control` the channel on which the parent passes renewed channels. */
int peruser_multiplexer_run(int slot, const int *listeners, int listener_count, const int *handoffs,
                            const int *handbacks, int channel_count, unsigned generation,
                            const int *previous_handbacks, int previous_count, unsigned previous_generation,
                            int demand, const void *secret, size_t secret_size, int control);

/* ---- Log lines a client or tenant can cause (rate-limited) ---- */

#define PERUSER_NOISY_NO_ENVIRONMENT 100

/* Whether a line of kind `kind` may be written now: -1 if not, or how many such lines were
 * left out since the last one written. */
long peruser_log_admit(int kind);

/* ---- Hand-off messages (workers) ---- */

#define PERUSER_MESSAGE_HEADER 20
#define PERUSER_MESSAGE_MAX (PERUSER_MESSAGE_HEADER + 96 * 1024)

/* Encodes a message carrying `len` consumed bytes and a hand-back ticket into `out`; its
 * length, or -1. */
long peruser_message_encode(unsigned char *out, size_t cap, int hops, uint64_t ticket,
                            const unsigned char *consumed, size_t len);

/* Validates a received message. The number of consumed bytes (which start at
 * PERUSER_MESSAGE_HEADER) with *hops and *ticket set, or -1 when the message is invalid. */
long peruser_message_decode(const unsigned char *message, size_t len, int *hops, uint64_t *ticket);

/* The header size the Swift codec uses (checked against PERUSER_MESSAGE_HEADER at start). */
long peruser_message_header_size(void);

#endif

/* Every entry point from the C shim into Swift (Sources/PeruserModule/Entry.swift, @_cdecl).
 * Strings go in as NUL-terminated C strings and come out copied into caller buffers; Swift
 * keeps its own state and never hands out pointers into it. */
#ifndef PERUSER_SWIFT_H
#define PERUSER_SWIFT_H

#include <stddef.h>

/* ---- Configuration (parent, one configuration pass at a time) ---- */

/* Forgets every environment: called at the start of each configuration pass. */
void peruser_config_reset(void);

/* Declares <Processor name> with its User/Group (and MinProcessors, or -1 for the global
 * value). Returns the environment's index, or -1 with a message in `error`. */
int peruser_config_add_environment(const char *name, const char *user, const char *group,
                                   int min_processors, char *error, size_t error_cap);

/* Index of environment `name`, or -1 with a message in `error`. */
int peruser_config_find_environment(const char *name, char *error, size_t error_cap);

/* Parses a whole number in [low, high] for `directive`. 0 with *value set, or -1 with a message. */
int peruser_config_parse_count(const char *directive, const char *text, int low, int high,
                               int *value, char *error, size_t error_cap);

int peruser_config_environment_count(void);

/* Copies the environment's name into `buf`. 0, or -1 for a bad index. */
int peruser_config_environment_name(int environment, char *buf, size_t cap);

/* The environment's resolved ids and user name (for initgroups). 0, or -1 for a bad index. */
int peruser_config_environment_identity(int environment, unsigned *uid, unsigned *gid,
                                        char *user, size_t user_cap);

/* ---- Supervision (parent only; private memory) ---- */

/* Starts a new child table for this generation. 0, or -1 with a message when the children
 * wanted do not fit in `slot_count` scoreboard slots. */
int peruser_supervisor_begin(int multiplexers, int global_min_processors, int slot_count,
                             char *error, size_t error_cap);

#define PERUSER_SPAWN_NONE 0
#define PERUSER_SPAWN_MULTIPLEXER 1
#define PERUSER_SPAWN_WORKER 2

/* The next child to start: PERUSER_SPAWN_* with its slot (and environment for a worker). */
int peruser_supervisor_next_spawn(long long now_ms, int *slot, int *environment);

/* Records a started child (environment -1 for a multiplexer). */
void peruser_supervisor_started(int slot, int environment, int pid, long long now_ms);

/* Records a child's exit. Its slot with *environment (-1 for a multiplexer), or -1 when the
 * pid is not one of ours. */
int peruser_supervisor_exited(int pid, long long now_ms, int *environment);

/* Copies the pids of live children into `out`; returns how many there are. */
int peruser_supervisor_pids(int *out, int cap);

/* One past the highest scoreboard slot in use. */
int peruser_supervisor_slots_in_use(void);

/* ---- Multiplexer (child, as User/Group) ---- */

/* Runs the accept/peek/route/hand-off loop; returns only on a fatal error (exit status). */
int peruser_multiplexer_run(const int *listeners, int listener_count, int handback,
                            const int *channels, int channel_count, int head_timeout_ms);

/* ---- Hand-off messages (workers) ---- */

#define PERUSER_MESSAGE_HEADER 12
#define PERUSER_MESSAGE_MAX (PERUSER_MESSAGE_HEADER + 96 * 1024)

/* Encodes a message carrying `len` consumed bytes into `out`; its length, or -1. */
long peruser_message_encode(unsigned char *out, size_t cap, int hops,
                            const unsigned char *consumed, size_t len);

/* Validates a received message. The number of consumed bytes (which start at
 * PERUSER_MESSAGE_HEADER) with *hops set, or -1 when the message is invalid. */
long peruser_message_decode(const unsigned char *message, size_t len, int *hops);

#endif

/* What Swift needs from C: shared layouts, one-liners over C macros and over glibc calls that
 * Swift's Glibc module hides (variadic, or declared only under _GNU_SOURCE), and the C shim's
 * functions (CShim/) that wrap Apache's API. The C shim includes this header too, so both sides
 * are checked against one declaration. */
#ifndef PERUSER_SHIM_H
#define PERUSER_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/epoll.h> /* not part of Swift's Glibc module; the multiplexer needs it */
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/vfs.h>   /* statfs: not part of Swift's Glibc module either */
#include <unistd.h>

/* ---- glibc, as Swift cannot see it ---- */

/* Declared by glibc only under _GNU_SOURCE, which Swift's Glibc module is built without. */
extern int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);
extern int pipe2(int fds[2], int flags);
extern int memfd_create(const char *name, unsigned int flags);
extern int getresuid(uid_t *ruid, uid_t *euid, uid_t *suid);
extern int getresgid(gid_t *rgid, gid_t *egid, gid_t *sgid);
#define PERUSER_MFD_CLOEXEC 1U
#define PERUSER_SCHED_BATCH 3

/* prctl is variadic. */
static inline int peruser_prctl(int option, unsigned long value)
{
    return prctl(option, value, 0UL, 0UL, 0UL);
}

/* The file system type (statfs f_type) of `path`: 0 with *type set, or -1. */
static inline int peruser_filesystem_type(const char *path, long *type)
{
    struct statfs fs;
    if (statfs(path, &fs) != 0) {
        return -1;
    }
    *type = (long)fs.f_type;
    return 0;
}

/* The CMSG_* macros, for passing descriptors in SCM_RIGHTS (System/Channel.swift). */
static inline size_t peruser_cmsg_space(size_t bytes) { return CMSG_SPACE(bytes); }
static inline size_t peruser_cmsg_len(size_t bytes) { return CMSG_LEN(bytes); }
static inline struct cmsghdr *peruser_cmsg_first(struct msghdr *m) { return CMSG_FIRSTHDR(m); }
static inline struct cmsghdr *peruser_cmsg_next(struct msghdr *m, struct cmsghdr *c) { return CMSG_NXTHDR(m, c); }
static inline unsigned char *peruser_cmsg_data(struct cmsghdr *c) { return CMSG_DATA(c); }

/* Relaxed atomics on shared counters (written by many processes). */
static inline void peruser_atomic_add_u64(void *field, uint64_t value)
{
    __atomic_fetch_add((uint64_t *)field, value, __ATOMIC_RELAXED);
}

static inline void peruser_atomic_store_u32(void *field, uint32_t value)
{
    __atomic_store_n((uint32_t *)field, value, __ATOMIC_RELAXED);
}

static inline uint32_t peruser_atomic_load_u32(const void *field)
{
    return __atomic_load_n((const uint32_t *)field, __ATOMIC_RELAXED);
}

/* Stores `desired` if the field still holds `expected`; 1 when it did. */
static inline int peruser_atomic_cas_u32(void *field, uint32_t expected, uint32_t desired)
{
    return __atomic_compare_exchange_n((uint32_t *)field, &expected, desired, 0,
                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* ---- Layouts shared by C and Swift ---- */

/* Log levels (the APLOG_* values of http_log.h). */
enum {
    PERUSER_LOG_EMERG = 0,
    PERUSER_LOG_CRIT = 2,
    PERUSER_LOG_ERR = 3,
    PERUSER_LOG_WARNING = 4,
    PERUSER_LOG_NOTICE = 5,
    PERUSER_LOG_INFO = 6,
    PERUSER_LOG_DEBUG = 7
};

/* One of Peruser's directives as the configuration gave it: the command table stores these,
 * Configuration.build reads them. */
typedef struct {
    const char *name;         /* as in the command table */
    const char *arguments[2]; /* NULL when not given */
    const char *file;
    int32_t line;
    int32_t section;          /* index of the <Processor this one is inside, or -1 */
} peruser_directive;

/* mod_unixd's User and Group: whom the multiplexers run as without MultiplexerUser/Group. */
typedef struct {
    const char *user;
    uint32_t uid;
    uint32_t gid;
    const char *user_location;  /* "line N of F", or "the default" */
    const char *group_location;
} peruser_unixd_identity;

/* What the C side reads of the configuration (ap_mpm_query, the scoreboard, the gates). */
typedef struct {
    int32_t server_limit;
    int32_t max_clients;
    int32_t min_spare;
    int32_t max_spare;
    int32_t hand_back; /* PeruserHandBack */
} peruser_settings;

/* The parent's private record of one child slot (index = slot). Lives in Apache's retained
 * data, which is parent memory: it survives the module's unload and reload on restarts, so
 * children of older generations are still known, and no child can write it. */
typedef struct {
    int32_t pid;          /* 0: the slot is free */
    int32_t environment;  /* -1: multiplexer */
    uint32_t generation;
    uint8_t type;         /* ChildType */
    uint8_t retiring;     /* asked to exit when done (SIGUSR1) */
    uint8_t draining;     /* asked to drain its channel and exit (SIGWINCH) */
    uint8_t expired;      /* stopped for ExpireTimeout */
    int32_t page;         /* a worker's page in its environment's pool of the child table */
    int64_t started_at;   /* ms, monotonic */
    int64_t signalled_at; /* ms, monotonic; when a stop was last signalled */
} peruser_child_record;

/* Most child slots (ServerLimit's ceiling; Directives.swift says the same, checked at load). */
#define PERUSER_MOST_SLOTS 20000

/* What outlives a generation: Apache's retained data (parent memory), allocated zeroed by the
 * C shim, kept by Swift (Parent/Generation.swift; what it mallocs is parent memory too). The module is unloaded and reloaded on every
 * restart, so nothing of this may live in a Swift global. */
typedef struct {
    int32_t initialized;
    int32_t scoreboard_slots;
    int32_t demand[2];              /* multiplexers write [1], the parent reads [0] */
    int32_t *previous_handback;     /* the previous generation's hand-back receiving ends */
    int32_t previous_handback_count;
    uint32_t previous_generation;
    void *mux_secret;               /* one page, the key of hand-back tickets */
    int32_t *control;               /* the parent's end of each multiplexer's control channel, by
                                     * slot (PERUSER_MOST_SLOTS entries, malloc'd) */
    void *table;                    /* this generation's child table, and its memfd */
    size_t table_size;
    int32_t table_slots;
    int32_t table_environments;
    int32_t table_fd;
    void *previous_table;
    size_t previous_table_size;
    int32_t previous_table_environments;
    void *mux_state;                /* the multiplexers' availability board */
    size_t mux_state_size;
    peruser_child_record *records;  /* PERUSER_MOST_SLOTS entries, malloc'd */
} peruser_lasting;

/* ---- The C shim's functions (CShim/) ---- */

/* Writes one line to the main server's error log; _startup: to the console as well while
 * Apache starts (configtest). */
void peruser_shim_log(int level, const char *message);
void peruser_shim_log_startup(int level, const char *message);

/* Result of routing a connection whose vhost has no ServerEnvironment. */
#define PERUSER_ROUTE_NO_ENVIRONMENT (-1)

/* Finds the vhost that Apache's own rules give for a connection on socket `fd` (local address
 * read from the socket) with request target `target` and Host header `host` (either may be
 * NULL), and returns its environment index, or PERUSER_ROUTE_NO_ENVIRONMENT (logged, naming
 * the vhost). */
int peruser_shim_route(int fd, const char *host, const char *target);

/* Writes part of the status page to the request `ctx`. */
void peruser_shim_emit(void *ctx, const char *data, size_t len);

/* Children: Apache's side of a child's life. After fork, in the child: */
void peruser_shim_child_start(int slot);
/* Ends the child: the modules' child cleanups run, then exit(code). */
void peruser_shim_child_exit(int code);
void peruser_shim_close_listeners(void);
/* The listening sockets' descriptors (at most `cap`); how many there are. */
int peruser_shim_listeners(int *fds, int cap);
void peruser_shim_reopen_scoreboard(void);
/* Multiplexer: mod_unixd's privilege drop to the multiplexers' account (uid, gid: -1 keeps
 * User, Group), in `chroot` (NULL: none). 0, or -1 (logged). */
int peruser_shim_multiplexer_drop_privileges(const char *chroot, const char *user, int64_t uid, int64_t gid);
void peruser_shim_multiplexer_init(int slot);
/* Worker: child_init of every module, and the worker's pools. Returns MaxConnectionsPerChild
 * (0: no limit). Then, per connection: */
int peruser_shim_worker_init(int slot, int environment);
void peruser_shim_worker_ready(void);
/* Serves a connection (a connected TCP socket) with Apache, the bytes already consumed from
 * it first. */
void peruser_shim_serve(int fd, const unsigned char *consumed, size_t len);
/* Whether SIGUSR1 (retire when done) or SIGWINCH (drain the channel, then exit) came. */
int peruser_shim_stop_requested(void);
int peruser_shim_drain_requested(void);

/* Parent: */
#define PERUSER_SCOREBOARD_STARTING 1
#define PERUSER_SCOREBOARD_DEAD 0
/* A slot's scoreboard entry: starting with its pid, or dead. */
void peruser_shim_scoreboard_slot(int slot, int pid, int state);
/* A child that is not ours exited (a piped logger, which apr restarts). */
void peruser_shim_other_child_exited(int pid, int status);
/* Apache's monitor hook and piped-logger checks (once a second). */
void peruser_shim_monitor(void);
#define PERUSER_PENDING_RESTART 1
#define PERUSER_PENDING_SHUTDOWN 2
/* Whether a restart or a stop was asked for (signals to the parent). */
int peruser_shim_pending(void);

#endif

/* Functions of the C shim (CShim/) that the Swift code calls. Defined in C because they need
 * Apache's API, variadic logging, or the CMSG_* macros. The C shim includes this header too,
 * so both sides are checked against one declaration. */
#ifndef PERUSER_SHIM_H
#define PERUSER_SHIM_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/epoll.h> /* not part of Swift's Glibc module; the multiplexer needs it */
#include <sys/socket.h>
#include <sys/vfs.h>   /* statfs: not part of Swift's Glibc module either */

/* glibc declares accept4 only under _GNU_SOURCE, which Swift's Glibc module is built without. */
extern int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);

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

/* Log levels (the APLOG_* values of http_log.h). */
enum {
    PERUSER_LOG_ERR = 3,
    PERUSER_LOG_WARNING = 4,
    PERUSER_LOG_NOTICE = 5,
    PERUSER_LOG_INFO = 6,
    PERUSER_LOG_DEBUG = 7
};

/* Writes one line to the error log of the main server. */
void peruser_shim_log(int level, const char *message);

/* Result of routing a connection whose vhost has no ServerEnvironment. */
#define PERUSER_ROUTE_NO_ENVIRONMENT (-1)

/* Finds the vhost that Apache's own rules give for a connection on socket `fd` (local address
 * read from the socket) with request target `target` and Host header `host` (either may be
 * NULL), and returns its environment index, or PERUSER_ROUTE_NO_ENVIRONMENT (logged, naming
 * the vhost). */
int peruser_shim_route(int fd, const char *host, const char *target);

/* Sends `len` bytes with `fd` in SCM_RIGHTS over a SOCK_SEQPACKET channel, never blocking.
 * Returns 0, or -errno (-EAGAIN when the channel is full). */
int peruser_shim_send_fd(int channel, int fd, const void *buf, size_t len);

/* Receives one message with exactly one fd. Returns the message length with *fd set; 0 when
 * every writer has closed the channel (or an empty message came); or -errno: -EAGAIN when
 * nothing is queued (if nonblocking), -EBADMSG for a message that was truncated or did not
 * carry exactly one fd (any fds it carried are closed; logged). */
ssize_t peruser_shim_recv_fd(int channel, void *buf, size_t cap, int nonblocking, int *fd);

/* ---- Process management ---- */

/* Renewing an environment's channels after one of its workers shut them down: new channels
 * in the parent (for the workers it starts from now on), then, on each live multiplexer's
 * control channel, two messages {environment, kind} with the new ends. 0, or -1 / -errno. */
#define PERUSER_CONTROL_HANDOFF 0
#define PERUSER_CONTROL_HANDBACK 1
int peruser_shim_renew_channels(int environment);
int peruser_shim_give_channels(int slot, int environment);

/* Moves every connection queued in environment `environment`'s channel (of this generation)
 * back to the multiplexers over the hand-back channel, untouched: the parent never reads a
 * client's bytes. Returns how many were moved; *lost counts those that could not be (closed,
 * logged). */
int peruser_shim_return_queued(int environment, int *lost);

#include <stdint.h>

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

/* Relaxed atomics on the shared child table's counters (written by many processes). */
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

/* Writes part of the status page to the request `ctx`. */
void peruser_shim_emit(void *ctx, const char *data, size_t len);

/* Forks a child into `slot` (environment -1: a multiplexer). Its pid, or -1 (logged). */
int peruser_shim_spawn(int slot, int environment, int type);

/* Signals a child the parent forked. 0, or -errno. */
int peruser_shim_signal(int pid, int sig);

/* Multiplexer: whether it was asked to stop (SIGUSR1) and should finish what it holds. */
int peruser_shim_stop_requested(void);

#endif

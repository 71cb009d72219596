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
#define PERUSER_MFD_ALLOW_SEALING 2U

/* Seals a memfd against any change (F_ADD_SEALS is Linux-only, hidden from Swift's Glibc). */
#include <fcntl.h>
static inline int peruser_seal_read_only(int fd)
{
    return fcntl(fd, 1033 /* F_ADD_SEALS */, 0x0001 | 0x0002 | 0x0004 | 0x0008 /* SEAL, SHRINK, GROW, WRITE */);
}
#define PERUSER_SCHED_OTHER 0
#define PERUSER_SCHED_BATCH 3

/* prctl is variadic. */
static inline int peruser_prctl(int option, unsigned long value)
{
    return prctl(option, value, 0UL, 0UL, 0UL);
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

/* Adds and returns the new value. */
static inline uint64_t peruser_atomic_add_fetch_u64(void *field, uint64_t value)
{
    return __atomic_add_fetch((uint64_t *)field, value, __ATOMIC_RELAXED);
}

static inline uint32_t peruser_atomic_add_fetch_u32(void *field, uint32_t value)
{
    return __atomic_add_fetch((uint32_t *)field, value, __ATOMIC_RELAXED);
}

static inline uint64_t peruser_atomic_load_u64(const void *field)
{
    return __atomic_load_n((const uint64_t *)field, __ATOMIC_RELAXED);
}

static inline void peruser_atomic_store_u64(void *field, uint64_t value)
{
    __atomic_store_n((uint64_t *)field, value, __ATOMIC_RELAXED);
}

static inline int peruser_atomic_cas_u64(void *field, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n((uint64_t *)field, &expected, desired, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
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
    int32_t environment;      /* ServerEnvironment, AssignUserID: set by check_config; else -1 */
} peruser_directive;

/* What the C side reads of the configuration: the request gates' PeruserHandBack (ap_mpm_query
 * and the scoreboard are Swift's, and read the configuration there). */
typedef struct {
    int32_t hand_back;
} peruser_settings;

/* ---- The C shim's functions (CShim/): what Swift cannot call in Apache directly ---- */

/* Writes one line to the main server's error log; _startup: to the console as well while
 * Apache starts (configtest). */
void peruser_shim_log(int level, const char *message);
void peruser_shim_log_startup(int level, const char *message);

/* The root parent's SIGCHLD (1: notes each exit and interrupts its poll; 0: the default,
 * before the module is unloaded). peruser_shim_children_exited: whether one came since the
 * last call (it clears the note), so the parent asks waitpid, which walks every child in the
 * kernel, only then. Set by a signal handler, hence C. */
void peruser_shim_watch_children(int watch);
int peruser_shim_children_exited(void);

/* Forks a child for the root, a subreaper, to adopt: a go-between made with vfork, so that it
 * shares this process's memory instead of copying it (and unmapping the copy at its exit), forks
 * the child and exits at once. Returns 0 in the child, the child's pid in the caller, or -errno
 * (no child). Every signal is blocked while the go-between runs on this process's memory, where
 * a handler would change this process's state; the child gets the caller's mask back. C: vfork
 * returns twice on one stack, which Swift code must not be compiled around. */
pid_t peruser_shim_fork_for_root(void);

/* In a child right after fork: APR's thread bookkeeping, and the handlers of SIGUSR1 (retire
 * when done) and SIGWINCH (drain the channel, then exit). Then, with the child's pool, its
 * main thread record. 0, or -1. */
void peruser_shim_after_fork(void);
int peruser_shim_child_main_thread(void *pool);
/* Whether SIGUSR1 or SIGWINCH came; whether SIGWINCH came. */
int peruser_shim_stop_requested(void);
int peruser_shim_drain_requested(void);

/* This process is a worker of `environment`: the hooks of CShim/connection.c apply. */
void peruser_shim_worker_serves(int environment);
/* A connection on apr_socket_t `socket` starts, the `len` bytes already consumed of it first
 * (`lent`: the multiplexer keeps watching it, so nothing is read past an answer), with
 * `keepalives` responses that kept it alive in the workers before (its conn_rec counts on from
 * there, for MaxKeepAliveRequests); after it: whether it was handed back (then it must not be
 * closed here). */
void peruser_shim_connection_begins(void *socket, const unsigned char *consumed, size_t len, int lent,
                                    uint32_t keepalives);
int peruser_shim_connection_handed_back(void);
/* How many streams of this worker's connection are running (0: an idle session), or -1 when
 * it does not speak HTTP/2. */
int peruser_shim_http2_streams(void);

/* The environment serving server_rec `server`, or -1 (its module configuration is a macro). */
int peruser_shim_server_environment(const void *server);

/* The index-th module Apache loaded (ap_loaded_modules, in load order): the shared object it
 * came from and its symbol, for the LoadModule lines of a process image's configuration.
 * Returns 1 with *file NULL for a module linked into httpd, 0 past the last. (dladdr needs
 * _GNU_SOURCE, which Swift's Glibc module is built without.) */
int peruser_shim_loaded_module(int index, const char **file, const char **symbol);
/* The symbol of the loaded module (as in its LoadModule line) that owns directive `name`, or
 * NULL (core, a module linked into httpd, or none). */
const char *peruser_shim_directive_module(const char *name);

/* Removes this pass's post_config hooks of the loaded module whose LoadModule symbol is
 * `symbol` (functions in its shared object), so that Apache does not run them; call from
 * check_config, after Apache sorted the hooks. Returns how many. */
int peruser_shim_drop_post_config(const char *symbol);

/* DefaultRuntimeDir as Apache resolved it (allocated from `pool`). */
const char *peruser_shim_runtime_dir(void *pool);
/* "name (<VirtualHost addr:port> on line N of F)", allocated in apr_pool_t `pool`. */
const char *peruser_shim_vhost_description(void *pool, const void *server);

#endif

/*
 * Benchmark: what waking one of N processes costs, without Apache or this module (issue 15).
 *
 * At 300 tenants a random-tenant request wakes a worker that last ran about 300 processes
 * ago; this machine decides how much that costs. N processes pass tokens around a ring of
 * pipes (two tokens: two CPUs busy, as wrk keeps them). Each hop wakes the next process,
 * which touches PRIVATE pages of its own memory (LINES cache lines each) and SHARED pages of
 * a mapping all of them share (as the libraries' text), then writes to the next pipe. A hop
 * is the shape of a crossing: one process wakes another, which touches about what a worker
 * touches for a 1 KiB response (bench/footprint.py: ~95 private and ~170 text pages).
 * Printed: CPU per hop (all processes, from /proc/PID/schedstat) for each N. As much as the
 * cost grows from N = 6 to N = 300 here, a worker's request at 300 tenants grows at least
 * that much: the machine's caches and page walks, not the code that runs.
 *
 *   cc -O2 -o /tmp/cold_ring bench/cold_ring.c && /tmp/cold_ring [PRIVATE SHARED LINES [N...]]
 *
 * Defaults: 150 private pages, 120 shared, 16 lines; N = 6 12 100 300 600. No network;
 * about 4 s per N. Writes nothing; BENCHMARKS.md has the findings.
 *
 * COLD_RING_HUGE=shared, private or both puts that memory in 2 MiB pages (MADV_HUGEPAGE;
 * the kernel's transparent huge pages must allow madvise): a member then needs one or two
 * TLB entries instead of hundreds, so what is left of the rise with N is the caches'.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { PAGE = 4096, LINE = 64 };
#define HUGE_PAGE ((size_t)2 << 20)

/* `bytes` of private anonymous memory starting on a 2 MiB boundary, in huge pages if `huge`
 * (else in 4 KiB ones, whatever the system's default); *mapped and *length to unmap it. */
static char *region(size_t bytes, int huge, char **mapped, size_t *length) {
    size_t rounded = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    char *raw = mmap(0, rounded + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *start = (char *)(((unsigned long)raw + HUGE_PAGE - 1) & ~(unsigned long)(HUGE_PAGE - 1));
    if (madvise(start, rounded, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0) perror("madvise");
    *mapped = raw;
    *length = rounded + HUGE_PAGE;
    return start;
}

static int huge_wanted(const char *which) {
    const char *huge = getenv("COLD_RING_HUGE");
    return huge && (strcmp(huge, which) == 0 || strcmp(huge, "both") == 0);
}

/* ns this process has run, or 0 if it is gone. */
static unsigned long long cpu_ns(pid_t pid) {
    char path[64];
    unsigned long long ns = 0;
    snprintf(path, sizeof path, "/proc/%d/schedstat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%llu", &ns) != 1) ns = 0;
        fclose(f);
    }
    return ns;
}

static unsigned long long ring_cpu_ns(const pid_t *kids, int n) {
    unsigned long long sum = 0;
    for (int i = 0; i < n; i++) sum += cpu_ns(kids[i]);
    return sum;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* One process of the ring: waits on its pipe, touches its memory, passes the token on. */
static void member(int in, int out, volatile char *shared, int shared_pages, int private_pages,
                   int lines, volatile long *hops) {
    char *mapped;
    size_t length;
    volatile char *mine = region((size_t)private_pages * PAGE + PAGE, huge_wanted("private"), &mapped, &length);
    if (!mine) _exit(1);
    for (size_t j = 0; j < (size_t)private_pages * PAGE; j++) mine[j] = (char)j;
    int stride = PAGE / lines;
    long sum = 0;
    char token;
    for (;;) {
        if (read(in, &token, 1) != 1) _exit(0);
        for (int p = 0; p < private_pages; p++)
            for (int l = 0; l < lines; l++) sum += mine[(size_t)p * PAGE + (size_t)l * stride];
        for (int p = 0; p < shared_pages; p++) sum += shared[(size_t)p * PAGE + (size_t)(p % (PAGE / LINE)) * LINE];
        mine[0] = (char)sum;
        __atomic_add_fetch(hops, 1, __ATOMIC_RELAXED);
        if (write(out, &token, 1) != 1) _exit(0);
    }
}

static int run(int n, int private_pages, int shared_pages, int lines) {
    int (*pipes)[2] = calloc((size_t)n, sizeof *pipes);
    pid_t *kids = calloc((size_t)n, sizeof *kids);
    if (!pipes || !kids) return 1;
    for (int i = 0; i < n; i++)
        if (pipe(pipes[i]) != 0) { perror("pipe"); return 1; }
    /* Written here, only read by the members: after fork they share its pages (as workers
     * share the libraries' text). */
    char *shared_mapped;
    size_t shared_length;
    volatile char *shared = region((size_t)shared_pages * PAGE + PAGE, huge_wanted("shared"),
                                   &shared_mapped, &shared_length);
    volatile long *hops = mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!shared || hops == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < (size_t)shared_pages * PAGE; i += LINE) shared[i] = 1;
    int forked = 0;
    for (; forked < n; forked++) {
        kids[forked] = fork();
        if (kids[forked] < 0) { perror("fork"); break; }
        if (kids[forked] == 0)
            member(pipes[forked][0], pipes[(forked + 1) % n][1], shared, shared_pages, private_pages, lines, hops);
    }
    if (forked < n) { /* a broken ring measures nothing */
        for (int i = 0; i < forked; i++) kill(kids[i], SIGKILL);
        while (wait(NULL) > 0) {}
        return 1;
    }
    for (int t = 0; t < 2; t++)
        if (write(pipes[t * n / 2][1], "x", 1) != 1) perror("write");
    usleep(500000); /* every member has run a few times: its memory is faulted in */
    long hops_before = *hops;
    unsigned long long cpu_before = ring_cpu_ns(kids, n);
    double started = now();
    usleep(3000000);
    long hops_after = *hops;
    unsigned long long cpu_after = ring_cpu_ns(kids, n);
    double seconds = now() - started;
    long count = hops_after - hops_before;
    if (count > 0)
        printf("N=%4d  %8.0f hops/s  %6.2f µs CPU per hop\n", n, (double)count / seconds,
               (double)(cpu_after - cpu_before) / 1e3 / (double)count);
    for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
    while (wait(NULL) > 0) {}
    munmap(shared_mapped, shared_length);
    munmap((void *)hops, PAGE);
    for (int i = 0; i < n; i++) { close(pipes[i][0]); close(pipes[i][1]); }
    free(pipes);
    free(kids);
    return 0;
}

int main(int argc, char **argv) {
    int private_pages = argc > 1 ? atoi(argv[1]) : 150;
    int shared_pages = argc > 2 ? atoi(argv[2]) : 120;
    int lines = argc > 3 ? atoi(argv[3]) : 16;
    if (private_pages < 0 || shared_pages < 0 || lines < 1 || lines > PAGE / LINE) {
        fprintf(stderr, "usage: cold_ring [PRIVATE_PAGES SHARED_PAGES LINES(1-64) [N...]]\n");
        return 2;
    }
    int sizes[64] = {6, 12, 100, 300, 600};
    int count = 5;
    if (argc > 4) {
        count = argc - 4 < 64 ? argc - 4 : 64;
        for (int i = 0; i < count; i++) {
            sizes[i] = atoi(argv[4 + i]);
            if (sizes[i] < 2) {
                fprintf(stderr, "cold_ring: N must be 2 or more, not %s\n", argv[4 + i]);
                return 2;
            }
        }
    }
    const char *huge = getenv("COLD_RING_HUGE");
    printf("%d private pages x %d lines, %d shared pages, two tokens%s%s\n", private_pages, lines, shared_pages,
           huge ? ", huge pages: " : "", huge ? huge : "");
    for (int i = 0; i < count; i++)
        if (run(sizes[i], private_pages, shared_pages, lines) != 0) return 1;
    return 0;
}

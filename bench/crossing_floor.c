/*
 * Benchmark: the least a crossing can cost on this machine, without Apache or this module
 * (issue 15).
 *
 * A random-tenant request on a pooled connection must go through two processes: one that is
 * not the tenant reads the head and finds the host, then the tenant's process answers. This
 * program is that shape and nothing else, so that what it costs over one process answering
 * directly is a floor for any implementation of the architecture, this module included.
 *
 *   direct   PORT          40 processes, each blocks in accept and answers its connection
 *                          until the client closes it (prefork's shape).
 *   crossing PORT N [PAGES] one multiplexer and N workers, each with its own SOCK_SEQPACKET
 *                          channel. The multiplexer watches every client connection in one
 *                          epoll (EPOLLONESHOT), reads the head, takes the tenant number from
 *                          "Host: tNNN." and sends the descriptor (SCM_RIGHTS) with the head to
 *                          that worker, keeping its own copy watched (a lent connection). The
 *                          worker waits in epoll_wait on its channel, recvmsg, touches PAGES
 *                          private pages (default 0: the mechanism alone), marks the
 *                          connection given back in a shared byte, answers, closes its copy.
 *
 * Both answer every head with the same 1 KiB keep-alive response and parse the host the same
 * way; neither logs or opens a file. bench/crossing_floor.py runs wrk against both and prints
 * server CPU per request. Loopback only; the processes exit with their parent (SIGTERM).
 *
 *   cc -O2 -o /tmp/crossing_floor bench/crossing_floor.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FD 65536
#define HEAD_MAX 4096

static char response[2048];
static size_t response_length;
static volatile uint8_t *lent; /* shared: 1 while a worker holds a copy of the connection */

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void make_response(void) {
    char body[1024];
    memset(body, 'x', sizeof body);
    int n = snprintf(response, sizeof response,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1024\r\n"
                     "Connection: keep-alive\r\n\r\n");
    memcpy(response + n, body, sizeof body);
    response_length = (size_t)n + sizeof body;
}

/* The tenant number in "Host: tNNN." or "Host: www.tNNN.", or -1. */
static int tenant_of(const char *head, size_t length) {
    const char *end = head + length;
    for (const char *p = head; p + 7 < end; p++) {
        if ((p[0] == 'H' || p[0] == 'h') && strncasecmp(p, "host: ", 6) == 0) {
            p += 6;
            if (end - p > 4 && memcmp(p, "www.", 4) == 0) p += 4;
            if (p >= end || *p++ != 't') return -1;
            int n = 0, digits = 0;
            for (; p < end && *p >= '0' && *p <= '9'; p++, digits++) n = n * 10 + (*p - '0');
            return digits ? n : -1;
        }
    }
    return -1;
}

static void answer(int fd) {
    size_t sent = 0;
    while (sent < response_length) {
        ssize_t n = write(fd, response + sent, response_length - sent);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        sent += (size_t)n;
    }
}

static int listener(int port, int flags) {
    int fd = socket(AF_INET, SOCK_STREAM | flags, 0), one = 1;
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0) die("bind");
    if (listen(fd, 511) < 0) die("listen");
    return fd;
}

static void child_dies_with_parent(void) { prctl(PR_SET_PDEATHSIG, SIGTERM); }

static void direct(int port) {
    int listen_fd = listener(port, 0);
    for (int i = 0; i < 40; i++) {
        if (fork() == 0) {
            child_dies_with_parent();
            char head[HEAD_MAX];
            for (;;) {
                int fd = accept(listen_fd, NULL, NULL);
                if (fd < 0) continue;
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                for (;;) {
                    ssize_t n = read(fd, head, sizeof head);
                    if (n <= 0) break;
                    if (tenant_of(head, (size_t)n) < 0) break;
                    answer(fd);
                }
                close(fd);
            }
        }
    }
}

struct lend {
    int number; /* the multiplexer's descriptor number: the slot of the given-back byte */
    int length;
};

static void worker(int channel, int pages) {
    char *memory = pages ? mmap(NULL, (size_t)pages * 4096, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;
    if (memory == MAP_FAILED) die("mmap");
    int epoll_fd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, channel, &event);
    char message[sizeof(struct lend) + HEAD_MAX];
    char control[CMSG_SPACE(sizeof(int))];
    for (;;) {
        if (epoll_wait(epoll_fd, &event, 1, -1) <= 0) continue;
        struct iovec vector = {message, sizeof message};
        struct msghdr header = {.msg_iov = &vector, .msg_iovlen = 1, .msg_control = control,
                                .msg_controllen = sizeof control};
        ssize_t n = recvmsg(channel, &header, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < (ssize_t)sizeof(struct lend)) continue;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&header);
        if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS) continue;
        int fd;
        memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
        struct lend lend;
        memcpy(&lend, message, sizeof lend);
        for (int page = 0; page < pages; page++) memory[(size_t)page * 4096 + (page & 63) * 64]++;
        if (tenant_of(message + sizeof lend, (size_t)lend.length) >= 0) {
            /* Given back before the answer: the client's next head can only follow it. */
            __atomic_store_n(&lent[lend.number], 0, __ATOMIC_RELEASE);
            answer(fd);
        } else {
            __atomic_store_n(&lent[lend.number], 0, __ATOMIC_RELEASE);
        }
        close(fd);
    }
}

static void multiplexer(int port, int *channels, int tenants) {
    int listen_fd = listener(port, SOCK_NONBLOCK);
    int epoll_fd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listen_fd};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &event);
    static int waiting[MAX_FD];
    int waiting_count = 0;
    char message[sizeof(struct lend) + HEAD_MAX];
    struct epoll_event events[64];
    for (;;) {
        int ready = epoll_wait(epoll_fd, events, 64, waiting_count ? 1 : -1);
        /* Connections that stirred before their worker gave them back come first. */
        int still = 0;
        for (int i = 0; i < waiting_count; i++) {
            if (lent[waiting[i]]) { waiting[still++] = waiting[i]; continue; }
            struct epoll_event again = {.events = EPOLLIN | EPOLLONESHOT, .data.fd = waiting[i]};
            epoll_ctl(epoll_fd, EPOLL_CTL_MOD, waiting[i], &again);
        }
        waiting_count = still;
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == listen_fd) {
                int client;
                while ((client = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (client >= MAX_FD) { close(client); continue; }
                    int one = 1;
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    lent[client] = 0;
                    struct epoll_event added = {.events = EPOLLIN | EPOLLONESHOT, .data.fd = client};
                    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, client, &added);
                }
                continue;
            }
            if (__atomic_load_n(&lent[fd], __ATOMIC_ACQUIRE)) { waiting[waiting_count++] = fd; continue; }
            struct lend lend = {.number = fd};
            ssize_t n = recv(fd, message + sizeof lend, HEAD_MAX, MSG_DONTWAIT);
            if (n <= 0) {
                if (n < 0 && errno == EAGAIN) goto rearm;
                close(fd);
                continue;
            }
            lend.length = (int)n;
            int tenant = tenant_of(message + sizeof lend, (size_t)n);
            if (tenant < 0 || tenant >= tenants) { close(fd); continue; }
            memcpy(message, &lend, sizeof lend);
            char control[CMSG_SPACE(sizeof(int))] = {0};
            struct iovec vector = {message, sizeof lend + (size_t)n};
            struct msghdr header = {.msg_iov = &vector, .msg_iovlen = 1, .msg_control = control,
                                    .msg_controllen = sizeof control};
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&header);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
            lent[fd] = 1;
            if (sendmsg(channels[tenant], &header, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
                lent[fd] = 0;
                close(fd);
                continue;
            }
        rearm:;
            struct epoll_event again = {.events = EPOLLIN | EPOLLONESHOT, .data.fd = fd};
            epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &again);
        }
    }
}

static void crossing(int port, int tenants, int pages) {
    lent = mmap(NULL, MAX_FD, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (lent == MAP_FAILED) die("mmap");
    int *channels = calloc((size_t)tenants, sizeof(int));
    if (!channels) die("calloc");
    for (int t = 0; t < tenants; t++) {
        int ends[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) < 0) die("socketpair");
        if (fork() == 0) {
            child_dies_with_parent();
            for (int u = 0; u < t; u++) close(channels[u]);
            close(ends[0]);
            worker(ends[1], pages);
        }
        close(ends[1]);
        channels[t] = ends[0];
    }
    if (fork() == 0) {
        child_dies_with_parent();
        multiplexer(port, channels, tenants);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s direct PORT | crossing PORT N [PAGES]\n", argv[0]);
        return 2;
    }
    make_response();
    int port = atoi(argv[2]);
    if (strcmp(argv[1], "direct") == 0) {
        direct(port);
    } else if (strcmp(argv[1], "crossing") == 0 && argc >= 4) {
        crossing(port, atoi(argv[3]), argc >= 5 ? atoi(argv[4]) : 0);
    } else {
        fprintf(stderr, "unknown mode\n");
        return 2;
    }
    signal(SIGTERM, SIG_DFL);
    while (wait(NULL) > 0 || errno == EINTR) {}
    return 0;
}

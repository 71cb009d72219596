/* A worker's connection, as Apache's filters and hooks see it: the bytes already consumed go in
 * front of the socket; the raw head of each request is recorded, so that a request for another
 * environment can be handed back exactly as the client sent it; and gates keep every other
 * environment's request from running here. */
#include "peruser.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_main.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_ssl.h"
#include "scoreboard.h"
#include "util_filter.h"

#include <string.h>

/* The most kept-alive answers a connection carries into a worker: any MaxKeepAliveRequests is
 * below it, and a billion more answers in one worker never reach INT_MAX. */
#define PERUSER_KEEPALIVES_MAX (1 << 30)

/* A kept-alive request head longer than this cannot be handed to another environment. */
#define HEAD_RECORD_MAX (64 * 1024)

typedef struct {
    ap_filter_t *filter;
    int recording;
    int overflow;
    unsigned char *buf; /* PERUSER_CONSUMED_MAX bytes */
    apr_size_t len;
} head_record;

static struct {
    apr_socket_t *socket;
    const unsigned char *pending; /* bytes to put in front of the socket */
    apr_size_t pending_len;
    int requests_served;
    int handed_back;
    int socket_reads_paused; /* while handing back: take only what filters already buffered */
    int lent; /* the multiplexer watches the socket too: nothing is read past an answer */
    int carried_keepalives; /* responses that kept it alive in the workers before this one */
    head_record *record;
    /* This request's wait on the client and bytes from it, for ReaderShedTimeout. */
    int64_t waited_ms;
    uint64_t received;
    int http2; /* __atomic: set by the first HTTP/2 stream, on one of mod_http2's threads */
} current;

static ap_filter_rec_t *record_filter_handle;
static int is_worker;
static int my_environment = -1;

void peruser_shim_worker_serves(int environment)
{
    is_worker = 1;
    my_environment = environment;
}

/* Keeps a copy of the raw bytes of the request head being read. */
static apr_status_t record_filter(ap_filter_t *f, apr_bucket_brigade *bb, ap_input_mode_t mode,
                                  apr_read_type_e block, apr_off_t readbytes)
{
    head_record *record = f->ctx;
    apr_status_t rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
    apr_bucket *b;

    if (rv != APR_SUCCESS || !record->recording || mode == AP_MODE_SPECULATIVE) {
        return rv;
    }
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t len;
        if (APR_BUCKET_IS_METADATA(b)) {
            continue;
        }
        if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS || record->len + len > HEAD_RECORD_MAX) {
            record->overflow = 1;
            continue;
        }
        memcpy(record->buf + record->len, data, len);
        record->len += len;
    }
    return rv;
}

/* The worker's socket bucket: apr's socket bucket, except that its reads can be paused (they
 * then report "no data yet"), so a hand-back takes what httpd's filters buffered and leaves
 * the rest in the socket. */
static apr_status_t socket_read(apr_bucket *a, const char **str, apr_size_t *len, apr_read_type_e block);

static const apr_bucket_type_t pausable_socket_type = {
    "PERUSER_SOCKET", 5, APR_BUCKET_DATA, apr_bucket_destroy_noop, socket_read,
    apr_bucket_setaside_notimpl, apr_bucket_split_notimpl, apr_bucket_copy_notimpl
};

static apr_bucket *socket_bucket(apr_socket_t *sock, apr_bucket_alloc_t *list)
{
    apr_bucket *b = apr_bucket_alloc(sizeof(*b), list);
    APR_BUCKET_INIT(b);
    b->free = apr_bucket_free;
    b->list = list;
    b->type = &pausable_socket_type;
    b->length = (apr_size_t)(-1);
    b->start = -1;
    b->data = sock;
    return b;
}

static apr_status_t socket_read(apr_bucket *a, const char **str, apr_size_t *len, apr_read_type_e block)
{
    apr_socket_t *sock = a->data;
    apr_interval_time_t timeout = 0;
    apr_status_t rv;
    char *buf;

    *str = NULL;
    *len = 0;
    if (current.socket_reads_paused) {
        return APR_EAGAIN;
    }
    if (block == APR_NONBLOCK_READ) {
        apr_socket_timeout_get(sock, &timeout);
        apr_socket_timeout_set(sock, 0);
    }
    *len = APR_BUCKET_BUFF_SIZE;
    buf = apr_bucket_alloc(*len, a->list);
    if (block == APR_BLOCK_READ && apr_socket_timeout_get(sock, &timeout) == APR_SUCCESS && timeout != 0) {
        /* A blocking read: the worker waits on the client itself (ReaderShed.swift), so that
         * under pressure it can give up a client it has waited on too long. */
        apr_os_sock_t fd = -1;
        apr_os_sock_get(&fd, sock);
        apr_socket_timeout_set(sock, 0);
        rv = apr_socket_recv(sock, buf, len);
        while (APR_STATUS_IS_EAGAIN(rv)) {
            int32_t waited = peruser_worker_await_client(fd, timeout, &current.waited_ms, current.received);
            if (waited != 0) {
                rv = APR_TIMEUP;
                break;
            }
            *len = APR_BUCKET_BUFF_SIZE;
            rv = apr_socket_recv(sock, buf, len);
        }
        apr_socket_timeout_set(sock, timeout);
    }
    else {
        rv = apr_socket_recv(sock, buf, len);
        if (block == APR_NONBLOCK_READ) {
            apr_socket_timeout_set(sock, timeout);
        }
    }
    if (rv == APR_SUCCESS) {
        current.received += *len;
    }
    if (rv != APR_SUCCESS && rv != APR_EOF) {
        apr_bucket_free(buf);
        *len = 0;
        return rv;
    }
    if (*len > 0) {
        /* This bucket becomes the data; a fresh socket bucket follows it. */
        apr_bucket_heap *h;
        a = apr_bucket_heap_make(a, buf, *len, apr_bucket_free);
        h = a->data;
        h->alloc_len = APR_BUCKET_BUFF_SIZE;
        *str = buf;
        APR_BUCKET_INSERT_AFTER(a, socket_bucket(sock, a->list));
    }
    else {
        apr_bucket_free(buf); /* end of stream: an empty bucket, as apr's socket bucket does */
        a = apr_bucket_immortal_make(a, "", 0);
        *str = a->data;
    }
    return APR_SUCCESS;
}

/* Seeds the core input filter: bytes a multiplexer or another worker consumed, then the socket. */
static apr_status_t insert_network_bucket(conn_rec *c, apr_bucket_brigade *bb, apr_socket_t *socket)
{
    if (!is_worker || socket != current.socket) {
        return AP_DECLINED;
    }
    if (current.pending_len > 0) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create((const char *)current.pending, current.pending_len,
                                                           NULL, c->bucket_alloc));
        current.pending_len = 0;
    }
    APR_BRIGADE_INSERT_TAIL(bb, socket_bucket(socket, c->bucket_alloc));
    return APR_SUCCESS;
}

void peruser_shim_connection_begins(void *socket, const unsigned char *consumed, size_t len, int lent,
                                    uint32_t keepalives)
{
    memset(&current, 0, sizeof current);
    current.lent = lent;
    /* A worker wrote it: kept far below INT_MAX, as httpd adds one per answer to its int. */
    current.carried_keepalives = keepalives > PERUSER_KEEPALIVES_MAX ? PERUSER_KEEPALIVES_MAX : (int)keepalives;
    current.socket = socket;
    current.pending = consumed;
    current.pending_len = len;
}

int peruser_shim_connection_handed_back(void)
{
    return current.handed_back;
}

static int pre_connection(conn_rec *c, void *csd)
{
    head_record *record;
    if (!is_worker || c->master) {
        return DECLINED;
    }
    record = apr_pcalloc(c->pool, sizeof *record);
    record->buf = apr_palloc(c->pool, PERUSER_CONSUMED_MAX);
    record->filter = ap_add_input_filter_handle(record_filter_handle, record, NULL, c);
    current.record = record;
    /* MaxKeepAliveRequests counts the client's connection, not this worker's part of it: for
     * a connection that crosses environments, each part is a new conn_rec. */
    c->keepalives = current.carried_keepalives;
    return DECLINED;
}

/* Gives the connection back to the multiplexers: the head read so far, whatever the core input
 * filter has buffered, and what the socket holds right now travel with the fd. */
static int hand_back(request_rec *r)
{
    conn_rec *c = r->connection;
    head_record *record = current.record;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, c->bucket_alloc);
    apr_size_t room = PERUSER_CONSUMED_MAX;
    int rv;

    /* Socket reads are paused: this drains exactly what the input filters buffered past the
     * head; the rest stays in the socket for the next worker to read. */
    current.socket_reads_paused = 1;
    while (record->len < room && ap_get_brigade(record->filter->next, bb, AP_MODE_READBYTES, APR_NONBLOCK_READ,
                                                room - record->len) == APR_SUCCESS && !APR_BRIGADE_EMPTY(bb)) {
        apr_bucket *b;
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
            const char *data;
            apr_size_t len;
            if (!APR_BUCKET_IS_METADATA(b) && apr_bucket_read(b, &data, &len, APR_NONBLOCK_READ) == APR_SUCCESS) {
                len = len < room - record->len ? len : room - record->len;
                memcpy(record->buf + record->len, data, len);
                record->len += len;
            }
        }
        apr_brigade_cleanup(bb);
    }
    if (record->len >= room) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "peruser: more buffered input than a hand-back carries; refused");
        c->keepalive = AP_CONN_CLOSE;
        return HTTP_MISDIRECTED_REQUEST;
    }
    /* Earlier responses may still sit in the core output filter (it holds small responses back
     * while pipelined requests wait): write them first, so the client gets its answers in order. */
    apr_brigade_cleanup(bb);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(c->bucket_alloc));
    if (ap_pass_brigade(c->output_filters, bb) != APR_SUCCESS || c->aborted) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, "peruser: client went away before the hand-back");
        rv = 0;
    }
    else if ((rv = peruser_worker_hand_back(record->buf, record->len, current.requests_served, c->keepalives)) != 0) {
        /* Only this environment's channel can be broken (one of its own workers shut it down,
         * say): 421 and a close send the client to a new connection, routed as usual. */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, -rv, r,
                      "peruser: could not hand the connection back to a multiplexer; answered 421");
        c->keepalive = AP_CONN_CLOSE;
        return HTTP_MISDIRECTED_REQUEST;
    }
    else {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, "peruser: handed connection back (%lu bytes consumed) for %s",
                      (unsigned long)record->len, peruser_shim_vhost_description(r->pool, r->server));
        current.handed_back = 1;
    }
    /* Nothing more may be read from or written to this socket here. Closing our fd does not
     * close the connection. */
    apr_table_setn(r->notes, "peruser-handed-back", "1");
    c->keepalive = AP_CONN_CLOSE;
    c->aborted = 1;
    return DONE;
}

/* After a request on a kept-alive connection, no worker waits on a client for its next head:
 * unless it comes whole within a moment (Worker/NextHead.swift), the connection goes back to the
 * multiplexers (plain HTTP only: a TLS session cannot move). */
static void pre_read_request(request_rec *r, conn_rec *c)
{
    if (!is_worker || !current.record || c->master) {
        return;
    }
    current.record->recording = 1;
    current.record->overflow = 0;
    current.record->len = 0;
    current.waited_ms = 0; /* ReaderShedTimeout counts per request */
    current.received = 0;
    /* Nor does one client keep it while others wait for the environment (KeptAliveTurn). */
    if (current.requests_served > 0 && peruser_current_settings.hand_back && !ap_ssl_conn_is_ssl(c)
        && (peruser_kept_alive_turn_is_over() || !peruser_next_head_arrives(r))) {
        current.record->recording = 0;
        if (hand_back(r) != DONE) {
            c->aborted = 1; /* not handed back: closed, and the client opens a new connection */
        }
    }
}

/* HTTP/2 streams (requests on secondary connections, each on a thread of mod_http2's).
 *
 * Counted while they run, so that an idle session (no stream running) can be told to end when
 * its environment has connections waiting (Apache/Query.swift answers AP_MPMQ_STOPPING to it).
 *
 * With a module that is not thread-safe loaded, each stream's request also waits for the
 * worker's turn before anything of it runs (Worker/RequestTurns.swift). A stream ends on its
 * own thread when its EOR bucket passes (handler and filters done; PHP has cleaned up by then):
 * the request's pool goes later, on the connection's thread, whenever mod_http2 purges the
 * stream, which waited up to Timeout while every one of mod_http2's threads waited for a turn.
 * The pool's cleanup ends it if no EOR came. Subrequests and internal redirects (main or prev
 * set before this hook runs) live inside their main request's. */
typedef struct {
    int counted;
    int turn;
} stream_state;

static ap_filter_rec_t *stream_end_filter_handle;
static int http2_streams; /* __atomic: streams run on mod_http2's threads */

static void stream_ends(stream_state *stream)
{
    if (stream->turn) {
        stream->turn = 0;
        peruser_request_turn_ends();
    }
    if (stream->counted) {
        stream->counted = 0;
        __atomic_sub_fetch(&http2_streams, 1, __ATOMIC_SEQ_CST);
    }
}

static apr_status_t stream_cleanup(void *stream)
{
    stream_ends(stream);
    return APR_SUCCESS;
}

static apr_status_t stream_end_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    apr_bucket *b;
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
        if (AP_BUCKET_IS_EOR(b)) {
            stream_ends(f->ctx);
            ap_remove_output_filter(f);
            break;
        }
    }
    return ap_pass_brigade(f->next, bb);
}

static int create_request(request_rec *r)
{
    stream_state *stream;
    if (!is_worker || !r->connection->master || r->main || r->prev) {
        return OK;
    }
    stream = apr_pcalloc(r->pool, sizeof *stream);
    if (!__atomic_exchange_n(&current.http2, 1, __ATOMIC_SEQ_CST)) {
        peruser_worker_speaks_http2(1);
    }
    __atomic_add_fetch(&http2_streams, 1, __ATOMIC_SEQ_CST);
    stream->counted = 1;
    apr_pool_cleanup_register(r->pool, stream, stream_cleanup, apr_pool_cleanup_null);
    ap_add_output_filter_handle(stream_end_filter_handle, stream, NULL, r->connection);
    switch (peruser_request_turn_begins(apr_time_as_msec(r->server->timeout))) {
    case 1:
        stream->turn = 1;
        break;
    case -1:
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "peruser: an HTTP/2 stream waited Timeout for its turn "
                      "in this worker (requests run one at a time beside a module that is not thread-safe); "
                      "answered 503");
        apr_table_setn(r->notes, "peruser-no-turn", "1");
        break;
    }
    return OK;
}

int peruser_shim_http2_streams(void)
{
    if (!is_worker || !__atomic_load_n(&current.http2, __ATOMIC_SEQ_CST)) {
        return -1;
    }
    return __atomic_load_n(&http2_streams, __ATOMIC_SEQ_CST);
}

static int without_turn(const request_rec *r)
{
    const request_rec *main = r;
    while (main->main) main = main->main;
    while (main->prev) main = main->prev;
    return is_worker && apr_table_get(main->notes, "peruser-no-turn") != NULL;
}

static int request_is_ours(const request_rec *r)
{
    return peruser_shim_server_environment(r->server) == my_environment;
}

/* 421 Misdirected Request (RFC 9110 15.5.20): the client retries on a new connection, which the
 * multiplexers route to the right environment. Logged at info: any client can cause it. */
static int misdirected(request_rec *r, const char *where)
{
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "peruser: %s for %s, which environment %d does not serve; "
                  "answered 421", where, peruser_shim_vhost_description(r->pool, r->server), my_environment);
    return HTTP_MISDIRECTED_REQUEST;
}

static int post_read_request(request_rec *r)
{
    if (!is_worker) {
        return DECLINED;
    }
    /* HTTP/2 streams (c->master set), subrequests and internal redirects cannot move to another
     * process: another environment's vhost gets 421. */
    if (r->connection->master || r->main || r->prev || !current.record) {
        if (without_turn(r)) {
            return HTTP_SERVICE_UNAVAILABLE;
        }
        if (!request_is_ours(r)) {
            return misdirected(r, r->connection->master ? "HTTP/2 stream" : "request");
        }
        if (r->connection->master && !r->main && !r->prev) {
            /* An HTTP/2 stream counts as a request of the environment, as an HTTP/1.1 one does. */
            peruser_worker_started_request(r->the_request, r->server->server_hostname);
        }
        return DECLINED;
    }
    current.record->recording = 0;
    if (request_is_ours(r)) {
        current.requests_served++;
        peruser_worker_started_request(r->the_request, r->server->server_hostname);
        /* A connection that cannot go back to the multiplexers (TLS, or PeruserHandBack Off)
         * ends after this response once its turn is over while others wait (KeptAliveTurn);
         * httpd then answers with Connection: close. */
        if (current.requests_served > 1
            && (ap_ssl_conn_is_ssl(r->connection) || !peruser_current_settings.hand_back)
            && peruser_kept_alive_turn_is_over()) {
            r->connection->keepalive = AP_CONN_CLOSE;
            ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, "peruser: connections wait for this environment; this "
                          "kept-alive connection had its turn and closes after this response");
        }
        return DECLINED;
    }
    if (ap_ssl_conn_is_ssl(r->connection)) {
        return HTTP_MISDIRECTED_REQUEST; /* a TLS session cannot move to another process */
    }
    if (current.record->overflow) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "peruser: request head too large to hand to another environment");
        return HTTP_MISDIRECTED_REQUEST;
    }
    if (!peruser_current_settings.hand_back) {
        /* The client opens a new connection, which the multiplexers route; this worker never
         * holds a connection that later carries another tenant's requests. */
        r->connection->keepalive = AP_CONN_CLOSE;
        return misdirected(r, "request (PeruserHandBack Off)");
    }
    return hand_back(r);
}

/* The same check wherever a request can start running without post_read_request: internal
 * redirects (ErrorDocument, mod_rewrite), subrequests, and, as the last gate before any
 * content, every handler (CGI, PHP, files). Only what passes these runs in this worker. */
static int gate(request_rec *r, const char *where)
{
    if (without_turn(r)) {
        return HTTP_SERVICE_UNAVAILABLE;
    }
    return (!is_worker || request_is_ours(r)) ? DECLINED : misdirected(r, where);
}

static int gate_quick_handler(request_rec *r, int lookup)
{
    return gate(r, "internal request");
}

static int gate_translate(request_rec *r)
{
    return gate(r, "request");
}

static int gate_handler(request_rec *r)
{
    return gate(r, "handler");
}

/* The answer to a lent connection's client request (not a subrequest, an HTTP/2 stream or an
 * upgrade, which goes on reading), as its EOR bucket goes. */
static int lent_answer(const request_rec *r)
{
    return is_worker && current.lent && !r->connection->master && !r->main && r->status != HTTP_SWITCHING_PROTOCOLS;
}

/* A handed-back request is logged by the worker that serves it, not here. */
static int log_transaction(request_rec *r)
{
    /* A lent connection's answer is out: what the client sends next is the multiplexer's to
     * read, so httpd's look for a pipelined request (or anything else) finds only what it
     * already buffered. */
    if (lent_answer(r)) {
        current.socket_reads_paused = 1;
    }
    return (is_worker && apr_table_get(r->notes, "peruser-handed-back")) ? DONE : DECLINED;
}

/* A lent connection whose kept-alive answer is out and logged goes back to its multiplexer here,
 * as the answer's EOR bucket goes, unless input is buffered past it (a pipelined request: the
 * next read hands that back with the bytes). Without this, httpd's keep-alive loop would make a
 * whole request (pool, tables, every module's create_request) only for pre_read_request to give
 * the connection back: at hundreds of tenants nearly every request is one lend, in a worker
 * whose memory is cold. Last, so the access log sees the connection as it was (%X). */
static int give_back_answered(request_rec *r)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb;
    apr_status_t rv;

    /* Handed back already (a hand-back that failed set close or aborted), or ending here. */
    if (!lent_answer(r) || current.handed_back || c->aborted || c->keepalive != AP_CONN_KEEPALIVE
        || !peruser_current_settings.hand_back) {
        return DECLINED;
    }
    /* Reads are paused (log_transaction above): this sees only what the filters buffered. */
    bb = apr_brigade_create(r->pool, c->bucket_alloc);
    rv = ap_get_brigade(c->input_filters, bb, AP_MODE_SPECULATIVE, APR_NONBLOCK_READ, 1);
    if (rv == APR_SUCCESS && !APR_BRIGADE_EMPTY(bb)) {
        apr_brigade_destroy(bb);
        return DECLINED;
    }
    apr_brigade_destroy(bb);
    if (peruser_worker_hand_back(NULL, 0, current.requests_served, c->keepalives) != 0) {
        return DECLINED;
    }
    current.handed_back = 1;
    /* httpd's loop ends here; nothing more is read from or written to the socket. */
    c->keepalive = AP_CONN_CLOSE;
    return DECLINED;
}

void peruser_register_connection_hooks(void)
{
    ap_hook_pre_connection(pre_connection, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_create_request(create_request, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_pre_read_request(pre_read_request, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_post_read_request(post_read_request, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_quick_handler(gate_quick_handler, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_translate_name(gate_translate, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_handler(gate_handler, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_log_transaction(log_transaction, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_log_transaction(give_back_answered, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_insert_network_bucket(insert_network_bucket, NULL, NULL, APR_HOOK_MIDDLE);
    record_filter_handle = ap_register_input_filter("PERUSER_RECORD", record_filter, NULL, AP_FTYPE_CONNECTION);
    stream_end_filter_handle = ap_register_output_filter("PERUSER_STREAM_END", stream_end_filter, NULL,
                                                         AP_FTYPE_CONNECTION);
}

/*
 * The C side of a request: describes request_rec to Rust as a mp_request,
 * and implements the mp_request_io callbacks over Apache's client-block API
 * and output filters. No decisions are made here.
 */

#include "httpd.h"
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"

#include "apr_buckets.h"
#include "apr_strings.h"

#include "mp_bridge.h"

extern module AP_MODULE_DECLARE_DATA passenger_module;

APLOG_USE_MODULE(passenger);

/* The ctx of the I/O callbacks: one per handled request, on the handler's stack. */
typedef struct mp_io_ctx {
    request_rec *r;
    apr_bucket_brigade *bb; /* response bytes not yet passed down the filter chain */
    int tunnel;             /* the connection was switched to another protocol */
    apr_bucket_brigade *tunnel_in; /* the client's tunnelled bytes, one read at a time */
} mp_io_ctx;

static mp_str mp_str_of(const char *s)
{
    mp_str out = {s, s ? strlen(s) : 0};
    return out;
}

mp_request_state *mp_request_state_get(request_rec *r)
{
    mp_request_state *state = ap_get_module_config(r->request_config, &passenger_module);
    if (!state) {
        state = apr_pcalloc(r->pool, sizeof *state);
        ap_set_module_config(r->request_config, &passenger_module, state);
    }
    return state;
}

apr_status_t mp_bridge_free_match(void *match)
{
    mp_match_free(match);
    return APR_SUCCESS;
}

/* Copies an APR table into a pool-allocated pair array. */
static const mp_pair *mp_pairs_of(apr_pool_t *p, const apr_table_t *t, size_t *len)
{
    const apr_array_header_t *arr = apr_table_elts(t);
    const apr_table_entry_t *elts = (const apr_table_entry_t *)arr->elts;
    mp_pair *pairs = apr_palloc(p, sizeof *pairs * (arr->nelts ? arr->nelts : 1));
    size_t n = 0;
    for (int i = 0; i < arr->nelts; i++) {
        if (!elts[i].key) {
            continue;
        }
        pairs[n].name = mp_str_of(elts[i].key);
        pairs[n].value = mp_str_of(elts[i].val);
        n++;
    }
    *len = n;
    return pairs;
}

void mp_bridge_describe_request(request_rec *r, const mp_request_state *state, mp_request *out,
                                int full)
{
    memset(out, 0, sizeof *out);
    out->method = mp_str_of(r->method);
    out->uri = mp_str_of(r->uri);
    out->unparsed_uri = mp_str_of(r->unparsed_uri);
    out->args = mp_str_of(r->args);
    out->protocol = mp_str_of(r->protocol);
    out->filename = mp_str_of(state->original_filename ? state->original_filename : r->filename);
    out->document_root = mp_str_of(ap_document_root(r));
    out->server_name = mp_str_of(ap_get_server_name(r));
    out->server_port = ap_get_server_port(r);
    out->client_ip = mp_str_of(r->useragent_ip);
    out->client_port = r->useragent_addr ? r->useragent_addr->port : 0;
    out->local_ip = mp_str_of(r->connection->local_ip);
    out->remote_user = mp_str_of(r->user);
    out->auth_type = mp_str_of(r->ap_auth_type);
    out->is_https = strcmp(ap_http_scheme(r), "https") == 0;
    out->content_length = -1;
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    if (cl) {
        apr_off_t len;
        if (apr_strtoff(&len, cl, NULL, 10) == APR_SUCCESS && len >= 0) {
            out->content_length = len;
        }
    }
    if (full) {
        out->headers = mp_pairs_of(r->pool, r->headers_in, &out->headers_len);
        out->env = mp_pairs_of(r->pool, r->subprocess_env, &out->env_len);
    }
}

/* ------------------------------------------------------- I/O callbacks -- */

static int64_t mp_read_body(void *vctx, uint8_t *buf, size_t len)
{
    mp_io_ctx *ctx = vctx;
    long n = ap_get_client_block(ctx->r, (char *)buf, len);
    return n < 0 ? -1 : (int64_t)n;
}

static int32_t mp_send_head(void *vctx, uint32_t status, mp_str reason, const mp_pair *headers,
                            size_t headers_len)
{
    mp_io_ctx *ctx = vctx;
    request_rec *r = ctx->r;
    r->status = (int)status;
    r->status_line = apr_psprintf(r->pool, "%u %.*s", status, (int)reason.len, reason.ptr);
    for (size_t i = 0; i < headers_len; i++) {
        const char *name = apr_pstrmemdup(r->pool, headers[i].name.ptr, headers[i].name.len);
        const char *value = apr_pstrmemdup(r->pool, headers[i].value.ptr, headers[i].value.len);
        if (strcasecmp(name, "Content-Type") == 0) {
            ap_set_content_type(r, value);
        }
        else {
            apr_table_add(r->headers_out, name, value);
        }
    }
    return 0;
}

static int32_t mp_write_body(void *vctx, const uint8_t *buf, size_t len, int32_t flush)
{
    mp_io_ctx *ctx = vctx;
    request_rec *r = ctx->r;
    if (r->connection->aborted) {
        return -1;
    }
    if (len > 0 && ap_fwrite(r->output_filters, ctx->bb, (const char *)buf, len) != APR_SUCCESS) {
        return -1;
    }
    if (flush && ap_fflush(r->output_filters, ctx->bb) != APR_SUCCESS) {
        return -1;
    }
    return r->connection->aborted ? -1 : 0;
}

/* The client connection's socket descriptor, or -1 when it has none (a
 * stopping child closes the sockets of the connections it serves). */
static apr_os_sock_t mp_client_fd(conn_rec *c)
{
    apr_socket_t *sock = ap_get_conn_socket(c);
    apr_os_sock_t fd;
    return sock && apr_os_sock_get(&fd, sock) == APR_SUCCESS ? fd : -1;
}

static int32_t mp_client_gone(void *vctx)
{
    mp_io_ctx *ctx = vctx;
    conn_rec *c = ctx->r->connection;
    if (c->aborted) {
        return 1;
    }
    apr_os_sock_t fd = mp_client_fd(c);
    if (fd < 0) {
        return 0;
    }
    struct pollfd pfd = {fd, POLLRDHUP, 0};
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* ------------------------------------------------------ tunnel callbacks -- */

/* The interim response goes out as the app wrote it, then the connection
 * leaves HTTP: it will be closed after the tunnel, mod_reqtimeout must not
 * time out a quiet WebSocket, and the request's filters (HTTP headers,
 * chunking, compression) must not touch the tunnelled bytes, nor the end
 * of the request that Apache finalizes after the handler. */
static int32_t mp_tunnel_open(void *vctx, uint32_t status, mp_str reason, const mp_pair *headers,
                              size_t headers_len)
{
    mp_io_ctx *ctx = vctx;
    request_rec *r = ctx->r;
    conn_rec *c = r->connection;
    apr_os_sock_t fd = mp_client_fd(c);
    if (fd < 0) {
        return -1;
    }
    r->status = (int)status;
    r->status_line = apr_psprintf(r->pool, "%u %.*s", status, (int)reason.len, reason.ptr);
    apr_table_clear(r->headers_out);
    for (size_t i = 0; i < headers_len; i++) {
        apr_table_add(r->headers_out,
                      apr_pstrmemdup(r->pool, headers[i].name.ptr, headers[i].name.len),
                      apr_pstrmemdup(r->pool, headers[i].value.ptr, headers[i].value.len));
    }
    ap_send_interim_response(r, 1);

    ctx->tunnel = 1;
    ctx->tunnel_in = apr_brigade_create(r->pool, c->bucket_alloc);
    c->keepalive = AP_CONN_CLOSE;
    ap_remove_input_filter_byhandle(c->input_filters, "reqtimeout");
    /* It would hold small writes back until more come. */
    ap_remove_output_filter_byhandle(c->output_filters, "SSL/TLS Coalescing Filter");
    r->output_filters = r->proto_output_filters = c->output_filters;
    r->input_filters = r->proto_input_filters = c->input_filters;
    return c->aborted ? -1 : (int32_t)fd;
}

static int64_t mp_tunnel_read(void *vctx, uint8_t *buf, size_t len)
{
    mp_io_ctx *ctx = vctx;
    conn_rec *c = ctx->r->connection;
    apr_bucket_brigade *bb = ctx->tunnel_in;
    apr_status_t rv = ap_get_brigade(c->input_filters, bb, AP_MODE_READBYTES, APR_NONBLOCK_READ,
                                     (apr_off_t)len);
    if (APR_STATUS_IS_EAGAIN(rv)) {
        apr_brigade_cleanup(bb);
        return MP_TUNNEL_AGAIN;
    }
    if (APR_STATUS_IS_EOF(rv)) {
        apr_brigade_cleanup(bb);
        return 0;
    }
    apr_size_t n = len;
    if (rv == APR_SUCCESS) {
        rv = apr_brigade_flatten(bb, (char *)buf, &n);
    }
    apr_brigade_cleanup(bb);
    if (rv != APR_SUCCESS) {
        return -1;
    }
    if (n > 0) {
        return (int64_t)n;
    }
    /* The filters had nothing: either nothing has arrived, or (when the
     * socket itself reads as closed) the client's stream has ended. */
    apr_os_sock_t fd = mp_client_fd(c);
    if (fd < 0) {
        return -1;
    }
    char byte;
    ssize_t peeked = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (peeked == 0) {
        return 0;
    }
    if (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return -1;
    }
    return MP_TUNNEL_AGAIN;
}

/* Writes what Apache holds for the client without blocking, the way the
 * event MPM completes writes: the last filter (the core's) called without a
 * brigade. The filters above it (TLS) have already done their part. */
static int32_t mp_tunnel_flush(void *vctx)
{
    mp_io_ctx *ctx = vctx;
    conn_rec *c = ctx->r->connection;
    ap_filter_t *core = c->output_filters;
    while (core->next) {
        core = core->next;
    }
    if (core->frec->filter_func.out_func(core, NULL) != APR_SUCCESS || c->aborted) {
        return -1;
    }
    return c->data_in_output_filters ? 1 : 0;
}

/* `apachectl stop` makes a child close the connections its threads serve;
 * a closed APR socket has no descriptor left. */
static int32_t mp_tunnel_closed(void *vctx)
{
    mp_io_ctx *ctx = vctx;
    conn_rec *c = ctx->r->connection;
    return c->aborted || mp_client_fd(c) < 0;
}

/* No FLUSH bucket: that would block. The core filter writes what it can
 * and keeps the rest; with nothing pending before (the caller's rule) and
 * at most MP_TUNNEL_WRITE_MAX bytes, it stays below the amount at which it
 * would block. */
static int32_t mp_tunnel_write(void *vctx, const uint8_t *buf, size_t len)
{
    mp_io_ctx *ctx = vctx;
    conn_rec *c = ctx->r->connection;
    if (c->aborted || len > MP_TUNNEL_WRITE_MAX) {
        return -1;
    }
    apr_bucket_brigade *bb = ctx->bb;
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create((const char *)buf, len, c->bucket_alloc));
    apr_status_t rv = ap_pass_brigade(c->output_filters, bb);
    apr_brigade_cleanup(bb);
    if (rv != APR_SUCCESS || c->aborted) {
        return -1;
    }
    return mp_tunnel_flush(vctx);
}

/* -------------------------------------------------------------- handler -- */

int mp_bridge_handle(request_rec *r, mp_request_state *state)
{
    int rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK);
    if (rc != OK) {
        return rc;
    }
    mp_request req;
    mp_bridge_describe_request(r, state, &req, 1);
    req.has_body = ap_should_client_block(r);

    mp_io_ctx ctx = {r, apr_brigade_create(r->pool, r->connection->bucket_alloc), 0, NULL};
    mp_request_io io = {&ctx,           mp_read_body,   mp_send_head,   mp_write_body,
                        mp_client_gone, mp_tunnel_open, mp_tunnel_read, mp_tunnel_write,
                        mp_tunnel_flush, mp_tunnel_closed};
    uint32_t http_status = HTTP_INTERNAL_SERVER_ERROR;
    mp_status st = mp_handle_request(state->match, &req, &io, &http_status);

    if (ctx.tunnel) {
        /* The connection spoke another protocol and is closed next; there
         * is no HTTP response left to finish. */
        return DONE;
    }

    if (st == MP_OK) {
        APR_BRIGADE_INSERT_TAIL(ctx.bb, apr_bucket_eos_create(r->connection->bucket_alloc));
        ap_pass_brigade(r->output_filters, ctx.bb);
        return OK;
    }
    if (st == MP_ERR_CLIENT_GONE || http_status == 0) {
        /* The response started and cannot be completed: make sure the client
         * sees a truncated response (no last chunk, connection closed). */
        r->connection->keepalive = AP_CONN_CLOSE;
        APR_BRIGADE_INSERT_TAIL(ctx.bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL, r->pool,
                                                               r->connection->bucket_alloc));
        APR_BRIGADE_INSERT_TAIL(ctx.bb, apr_bucket_eos_create(r->connection->bucket_alloc));
        ap_pass_brigade(r->output_filters, ctx.bb);
        return OK;
    }
    return (int)http_status;
}

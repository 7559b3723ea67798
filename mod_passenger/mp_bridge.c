/*
 * The C side of a request: describes request_rec to Rust as a mp_request,
 * and implements the mp_request_io callbacks over Apache's client-block API
 * and output filters. No decisions are made here.
 */

#include "httpd.h"
#include <poll.h>

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

static int32_t mp_client_gone(void *vctx)
{
    mp_io_ctx *ctx = vctx;
    conn_rec *c = ctx->r->connection;
    if (c->aborted) {
        return 1;
    }
    apr_socket_t *sock = ap_get_conn_socket(c);
    apr_os_sock_t fd;
    if (!sock || apr_os_sock_get(&fd, sock) != APR_SUCCESS) {
        return 0;
    }
    struct pollfd pfd = {fd, POLLRDHUP, 0};
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR));
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

    mp_io_ctx ctx = {r, apr_brigade_create(r->pool, r->connection->bucket_alloc)};
    mp_request_io io = {&ctx, mp_read_body, mp_send_head, mp_write_body, mp_client_gone};
    uint32_t http_status = HTTP_INTERNAL_SERVER_ERROR;
    mp_status st = mp_handle_request(state->match, &req, &io, &http_status);

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

/*
 * The C ABI between the Apache shim (mod_passenger/) and the Rust library.
 *
 * Only <stdint.h>/<stddef.h> types: no httpd.h or APR type crosses this line.
 * build.rs runs bindgen over ffi/wrapper.h (which includes this file), with an
 * allowlist on the mp_/MP_ prefix, so the two sides can never disagree on a
 * layout.
 *
 * Ownership rules, for every function below unless it says otherwise:
 * - Pointers passed in are borrowed for the duration of the call only; Rust
 *   copies what it keeps.
 * - Handles returned by Rust are freed with the matching mp_*_free function,
 *   which the shim registers as an APR pool cleanup on the pool named in the
 *   function's comment.
 * - Every function catches Rust panics and returns MP_ERR_PANIC instead of
 *   unwinding into C.
 */
#ifndef MP_PASSENGER_FFI_H
#define MP_PASSENGER_FFI_H

#include <stddef.h>
#include <stdint.h>

#include "mp_config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A borrowed byte string: not NUL-terminated; ptr may be NULL when len is 0. */
typedef struct mp_str {
    const char *ptr;
    size_t len;
} mp_str;

/* A name/value pair of byte strings (a header, an environment variable). */
typedef struct mp_pair {
    mp_str name;
    mp_str value;
} mp_pair;

/* Status codes returned by every export. Numbers are never reused. */
typedef enum mp_status {
    MP_OK = 0,             /* done; for mp_match: the request belongs to an app */
    MP_DECLINED = 1,       /* not ours: let Apache handle the request */
    MP_ERR_NULL_ARG = 2,   /* a required pointer was NULL */
    MP_ERR_PANIC = 3,      /* a bug: Rust panicked; details were logged */
    MP_ERR_INVALID = 4,    /* invalid input (a directive value, a string that is not UTF-8) */
    MP_ERR_AGENT = 5,      /* the agent could not be started or reached */
    MP_ERR_CLIENT_GONE = 6 /* the client went away mid-response: abort its connection */
} mp_status;

/* Log levels, the same numbers as Apache's APLOG_* levels. */
#define MP_LOG_ERR 3
#define MP_LOG_WARNING 4
#define MP_LOG_NOTICE 5
#define MP_LOG_INFO 6
#define MP_LOG_DEBUG 7

/* The sink for Rust's log records: one call per record, `msg` borrowed for the call. */
typedef void (*mp_log_fn)(int32_t level, const char *msg, size_t len);

/* What the Apache parent knows about itself at post_config. */
typedef struct mp_startup_info {
    mp_str server_root;     /* ap_server_root */
    mp_str config_file;     /* ap_conftree's file: identifies this Apache instance */
    mp_str module_path;     /* the path of mod_passenger.so (dladdr), to find the agent */
    mp_str server_software; /* ap_get_server_description() */
    uint32_t apache_pid;    /* the parent's pid: the agent exits when it is gone */
    uint32_t apache_uid;    /* the User the children run as */
    uint32_t apache_gid;    /* the Group the children run as */
    uint64_t generation;    /* ap_my_generation-like counter: bumps on every restart */
} mp_startup_info;

/* One request, as the shim sees it in the handler phase. All borrowed. */
typedef struct mp_request {
    mp_str method;          /* r->method */
    mp_str uri;             /* r->uri: the decoded path, after mod_rewrite */
    mp_str unparsed_uri;    /* r->unparsed_uri: as the client sent it */
    mp_str args;            /* r->args: the query string as sent, without '?' */
    mp_str protocol;        /* r->protocol, e.g. "HTTP/1.1" */
    mp_str filename;        /* the file Apache mapped the URI to, before core shortened it */
    mp_str document_root;   /* ap_document_root(r) */
    mp_str server_name;     /* ap_get_server_name(r) */
    uint32_t server_port;   /* ap_get_server_port(r) */
    mp_str client_ip;       /* r->useragent_ip */
    uint32_t client_port;   /* the client's port */
    mp_str local_ip;        /* the address the request came in on */
    mp_str remote_user;     /* r->user, or empty */
    mp_str auth_type;       /* r->ap_auth_type, or empty */
    int32_t is_https;       /* the connection is TLS (HTTPS in subprocess_env) */
    int64_t content_length; /* -1 when unknown (chunked) */
    int32_t has_body;       /* a request body follows (Content-Length > 0 or chunked) */
    const mp_pair *headers; /* the request headers, in order */
    size_t headers_len;
    const mp_pair *env;     /* r->subprocess_env: SetEnv, PassEnv, SetEnvIf, mod_ssl... */
    size_t env_len;
} mp_request;

/*
 * The callbacks Rust uses to move a request's body and response through
 * Apache. `ctx` is the shim's per-request state (it holds request_rec).
 * Called only on the thread that called mp_handle_request, during that call.
 */
typedef struct mp_request_io {
    void *ctx;
    /* Reads up to `len` bytes of the (dechunked) request body into `buf`.
     * Returns the count read, 0 at the end of the body, -1 on a client error. */
    int64_t (*read_body)(void *ctx, uint8_t *buf, size_t len);
    /* Sets the status and the response headers. Returns 0, or -1 if a header was refused. */
    int32_t (*send_head)(void *ctx, uint32_t status, mp_str reason, const mp_pair *headers,
                         size_t headers_len);
    /* Writes response body bytes; flush != 0 pushes them to the client now.
     * Returns 0, or -1 if the client is gone. */
    int32_t (*write_body)(void *ctx, const uint8_t *buf, size_t len, int32_t flush);
    /* Returns non-zero when the client has closed its connection (checked
     * while the request waits for the application; never blocks). */
    int32_t (*client_gone)(void *ctx);
    /* Switches the client connection to the protocol the app agreed to
     * (a WebSocket): sends the interim response `status` (101) with
     * `headers` as they are, takes the connection out of HTTP (no
     * keep-alive, no request read timeouts, connection filters only) and
     * returns the client socket's file descriptor for polling, or -1. After
     * it, only tunnel_read and tunnel_write are called. */
    int32_t (*tunnel_open)(void *ctx, uint32_t status, mp_str reason, const mp_pair *headers,
                           size_t headers_len);
    /* Reads tunnelled bytes from the client without blocking: the count, 0
     * at the end of the client's stream, MP_TUNNEL_AGAIN when nothing is
     * ready yet, -1 on an error. */
    int64_t (*tunnel_read)(void *ctx, uint8_t *buf, size_t len);
    /* Hands tunnelled bytes (at most MP_TUNNEL_WRITE_MAX) to the client
     * connection without blocking: what the socket does not take now stays
     * with Apache. Returns 0 when everything was written, 1 when bytes are
     * pending (poll the client socket for writing, then call tunnel_flush;
     * call tunnel_write only when nothing is pending), -1 if the client is
     * gone. */
    int32_t (*tunnel_write)(void *ctx, const uint8_t *buf, size_t len);
    /* Writes what is pending without blocking; returns as tunnel_write. */
    int32_t (*tunnel_flush)(void *ctx);
    /* Returns non-zero when Apache has closed the client connection itself
     * (a child stopping closes its connections). Never blocks. */
    int32_t (*tunnel_closed)(void *ctx);
} mp_request_io;

/* The most tunnel_write takes in one call: with nothing pending before it,
 * Apache keeps the rest without ever blocking. */
#define MP_TUNNEL_WRITE_MAX 16384

/* tunnel_read: no bytes are ready; poll the client socket and call again. */
#define MP_TUNNEL_AGAIN (-2)

/* The Rust side's decision about one request, with the request's location
 * config (opaque). */
typedef struct mp_match mp_match;

/*
 * Installs the log sink for this process. Call in post_config (parent) and
 * child_init (children). Thread: any, before requests are served.
 */
mp_status mp_log_init(mp_log_fn sink, int32_t max_level);

/*
 * post_config, not the dry run: finds the agent of this Apache instance or
 * starts one, and hands it the configuration. On success writes the agent's
 * pid to *agent_pid (when this process is its parent, so the shim can
 * supervise it; else 0). On failure writes a NUL-terminated message into
 * errbuf (at most errlen bytes). Thread: the Apache parent's only thread.
 */
mp_status mp_agent_ensure(const mp_server_config *config, const mp_startup_info *info,
                          int32_t *agent_pid, char *errbuf, size_t errlen);

/*
 * Decides whether a request belongs to an application (fixups phase). On
 * MP_OK writes a new handle to *out, to be freed with mp_match_free
 * (register it on r->pool). MP_DECLINED: Apache serves the request. Any
 * other code: respond with *http_status (500 with a message in the log).
 */
mp_status mp_match_request(const mp_dir_config *dir, const mp_request *req, mp_match **out,
                           uint32_t *http_status);

/* Frees a handle from mp_match_request. NULL is ignored. */
void mp_match_free(mp_match *m);

/*
 * Serves a matched request through the agent (handler phase). Returns MP_OK
 * when a response was sent (its status already set through io), or an error:
 * then *http_status is the status Apache should answer with (500, 502, 503,
 * 504), or 0 when the response was already started and the connection must
 * be aborted (MP_ERR_CLIENT_GONE).
 */
mp_status mp_handle_request(const mp_match *m, const mp_request *req, const mp_request_io *io,
                            uint32_t *http_status);

#ifdef __cplusplus
}
#endif

#endif /* MP_PASSENGER_FFI_H */

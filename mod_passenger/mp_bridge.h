/*
 * The C side of a request: per-request state, the description of a request
 * handed to Rust, and the I/O callbacks Rust uses to read the body and write
 * the response through Apache's filters.
 */
#ifndef MP_BRIDGE_H
#define MP_BRIDGE_H

#include "httpd.h"

#include "passenger_ffi.h"

/* Per-request state, kept in r->request_config. */
typedef struct mp_request_state {
    const char *original_filename; /* r->filename before core's directory walk */
    mp_match *match;               /* set by the fixup when the request is ours */
} mp_request_state;

/* The request's state, created on first use. */
mp_request_state *mp_request_state_get(request_rec *r);

/* Fills *out from r. With full != 0 also the header and environment arrays
 * (allocated from r->pool). */
void mp_bridge_describe_request(request_rec *r, const mp_request_state *state, mp_request *out,
                                int full);

/* Serves a matched request through Rust; returns the handler's result. */
int mp_bridge_handle(request_rec *r, mp_request_state *state);

/* Pool cleanup that frees a mp_match. */
apr_status_t mp_bridge_free_match(void *match);

#endif

/*
 * Directive handling: the command table, the setters, and create/merge of
 * the server and per-directory configs (the structs of ffi/mp_config.h).
 *
 * The command table and the field descriptors are generated from the
 * directive table in src/config/table.rs (see mp_config.c); every check of
 * a directive's place and value is made in Rust by mp_directive_check.
 */
#ifndef MP_CONFIG_SHIM_H
#define MP_CONFIG_SHIM_H

#include "httpd.h"

#include "http_config.h"

#include "passenger_ffi.h"

/* Every directive and alias; for the module record. */
extern const command_rec mp_commands[];

/* Server config: all directives here are global, so every server_rec ends
 * up with the main server's values (a vhost's merge copies them). */
void *mp_create_server_config(apr_pool_t *p, server_rec *s);
void *mp_merge_server_config(apr_pool_t *p, void *base, void *add);

/* Per-directory config: every field unset; merge = the child's value when
 * set, else the parent's, in a new struct from the merge pool. */
void *mp_create_dir_config(apr_pool_t *p, char *dir);
void *mp_merge_dir_config(apr_pool_t *p, void *base, void *add);

#endif /* MP_CONFIG_SHIM_H */

/*
 * mod_passenger: the Apache side of an application server for Rack, WSGI and
 * Node.js applications.
 *
 * This file is the shim's table of contents: it registers the hooks, turns
 * Apache's request and server objects into the plain structs of
 * ffi/passenger_ffi.h, and calls the Rust library, which makes every
 * decision. Directive parsing and config merging live in mp_config.c; the
 * request I/O callbacks Rust calls live in mp_bridge.c.
 *
 * The file must keep the name mod_passenger.c: configurations test for the
 * module with <IfModule mod_passenger.c>.
 */

#include <dlfcn.h>
#include <unistd.h>

#include "httpd.h"
#include "ap_mpm.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_main.h"
#include "http_protocol.h"
#include "http_request.h"
#include "mpm_common.h"
#include "unixd.h"
#include "util_cfgtree.h"

#include "apr_strings.h"

#include "passenger_ffi.h"

#include "mp_bridge.h"
#include "mp_config.h"

module AP_MODULE_DECLARE_DATA passenger_module;

/* The main server, for log records that belong to no request. Reset by every
 * post_config, so it never outlives a configuration generation. */
static server_rec *mp_main_server = NULL;

/* What the parent needs to restart the agent if it dies (allocated from pconf). */
typedef struct mp_agent_state {
    apr_proc_t proc;
    apr_pool_t *pconf; /* the generation's pool: registrations end with it */
    const mp_server_config *config;
    mp_startup_info info;
} mp_agent_state;

static void mp_log_sink(int32_t level, const char *msg, size_t len)
{
    ap_log_error(APLOG_MARK, level, 0, mp_main_server, "%.*s", (int)len, msg);
}

static mp_str mp_cstr(const char *s)
{
    mp_str out = {s, s ? strlen(s) : 0};
    return out;
}

/* ---------------------------------------------------------------- agent -- */

static void mp_agent_maintenance(int reason, void *data, apr_wait_t status);

/* Starts (or finds) the agent and, when this process is its parent,
 * registers it for supervision on pconf. */
static apr_status_t mp_agent_start(mp_agent_state *st)
{
    char err[1024] = "";
    int32_t pid = 0;
    mp_status rc = mp_agent_ensure(st->config, &st->info, &pid, err, sizeof err);
    if (rc != MP_OK) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, mp_main_server,
                     "MP0001: mod_passenger could not start its agent: %s", err);
        return APR_EGENERAL;
    }
    if (pid > 0) {
        st->proc.pid = pid;
        apr_proc_other_child_register(&st->proc, mp_agent_maintenance, st, NULL, st->pconf);
    }
    return APR_SUCCESS;
}

/* Called by the MPM for the agent's process events (it is the parent's child). */
static void mp_agent_maintenance(int reason, void *data, apr_wait_t status)
{
    mp_agent_state *st = data;
    int mpm_state = AP_MPMQ_STARTING;
    switch (reason) {
    case APR_OC_REASON_DEATH:
    case APR_OC_REASON_LOST:
        apr_proc_other_child_unregister(st);
        ap_mpm_query(AP_MPMQ_MPM_STATE, &mpm_state);
        if (mpm_state == AP_MPMQ_STOPPING) {
            break;
        }
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, mp_main_server,
                     "MP0002: the passenger agent (pid %d) exited (%s %d); starting a new one",
                     (int)st->proc.pid, WIFSIGNALED(status) ? "signal" : "status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        mp_agent_start(st);
        break;
    case APR_OC_REASON_RESTART:
    case APR_OC_REASON_UNREGISTER:
    case APR_OC_REASON_UNWRITABLE:
    default:
        /* The agent outlives restarts; nothing to do. */
        break;
    }
}

/* ---------------------------------------------------------------- hooks -- */

static int mp_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void)plog;
    (void)ptemp;
    mp_main_server = s;
    mp_log_init(mp_log_sink, APLOG_DEBUG);

    /* The first pass at startup is a dry run; so is a configuration test. */
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG ||
        ap_state_query(AP_SQ_RUN_MODE) != AP_SQ_RM_NORMAL) {
        return OK;
    }

    Dl_info self;
    const char *module_path = "";
    if (dladdr((void *)&passenger_module, &self) && self.dli_fname) {
        module_path = self.dli_fname;
    }

    mp_agent_state *st = apr_pcalloc(pconf, sizeof *st);
    st->config = ap_get_module_config(s->module_config, &passenger_module);
    st->proc.pid = 0;
    st->pconf = pconf;
    st->info.server_root = mp_cstr(ap_server_root);
    st->info.config_file = mp_cstr(apr_pstrdup(pconf, ap_conftree ? ap_conftree->filename : ""));
    st->info.module_path = mp_cstr(apr_pstrdup(pconf, module_path));
    st->info.server_software = mp_cstr(apr_pstrdup(pconf, ap_get_server_description()));
    st->info.apache_pid = (uint32_t)getpid();
    st->info.apache_uid = (uint32_t)ap_unixd_config.user_id;
    st->info.apache_gid = (uint32_t)ap_unixd_config.group_id;
    int generation = 0;
    ap_mpm_query(AP_MPMQ_GENERATION, &generation);
    st->info.generation = (uint64_t)generation;

    /* A failure is logged; Apache keeps serving everything else. */
    mp_agent_start(st);
    ap_add_version_component(pconf, "Phusion_Passenger/6.0-rs");
    return OK;
}

static void mp_child_init(apr_pool_t *pchild, server_rec *s)
{
    (void)pchild;
    mp_main_server = s;
    mp_log_init(mp_log_sink, APLOG_DEBUG);
}

/* Remembers the file the URI mapped to before core's directory walk
 * shortens it to the deepest existing path. */
static int mp_save_filename(request_rec *r)
{
    mp_request_state *state = mp_request_state_get(r);
    state->original_filename = r->filename;
    return DECLINED;
}

/* Rails page caching, as the original does it: a GET for a path of an
 * app whose cached page exists (<path>.html, or <path>index.html for a
 * path ending in '/') is served by Apache as that file. Returns 1 when
 * r now names the page. */
static int mp_use_cached_page(request_rec *r, const char *filename)
{
    if (r->method_number != M_GET || !filename || !*filename) {
        return 0;
    }
    size_t len = strlen(filename);
    const char *page = apr_pstrcat(r->pool, filename,
                                   filename[len - 1] == '/' ? "index.html" : ".html", NULL);
    apr_finfo_t finfo;
    if (apr_stat(&finfo, page, APR_FINFO_MIN, r->pool) != APR_SUCCESS || finfo.filetype != APR_REG) {
        return 0;
    }
    r->filename = apr_pstrdup(r->pool, page);
    r->canonical_filename = r->filename;
    r->finfo = finfo;
    r->path_info = NULL;
    ap_set_content_type(r, "text/html");
    return 1;
}

static int mp_fixups(request_rec *r)
{
    if (r->handler && strcmp(r->handler, "redirect-handler") == 0) {
        return DECLINED; /* mod_rewrite at work */
    }
    mp_dir_config *dir = ap_get_module_config(r->per_dir_config, &passenger_module);
    mp_request_state *state = mp_request_state_get(r);
    mp_request req;
    mp_bridge_describe_request(r, state, &req, 0);

    mp_match *match = NULL;
    uint32_t http_status = HTTP_INTERNAL_SERVER_ERROR;
    mp_status rc = mp_match_request(dir, &req, &match, &http_status);
    if (rc == MP_DECLINED) {
        return DECLINED;
    }
    if (rc != MP_OK) {
        return (int)http_status;
    }
    if (mp_use_cached_page(r, state->original_filename)) {
        mp_match_free(match);
        return DECLINED;
    }
    state->match = match;
    apr_pool_cleanup_register(r->pool, match, mp_bridge_free_match, apr_pool_cleanup_null);
    /* Ours from here: keep mod_dir from redirecting or indexing the directory. */
    r->finfo.filetype = APR_NOFILE;
    return DECLINED;
}

static int mp_handler(request_rec *r)
{
    mp_request_state *state = ap_get_module_config(r->request_config, &passenger_module);
    if (!state || !state->match) {
        return DECLINED;
    }
    if (r->handler && strcmp(r->handler, "redirect-handler") == 0) {
        return DECLINED;
    }
    return mp_bridge_handle(r, state);
}

static void mp_register_hooks(apr_pool_t *p)
{
    (void)p;
    static const char *const before_rewrite[] = {"mod_rewrite.c", NULL};
    ap_hook_post_config(mp_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(mp_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_map_to_storage(mp_save_filename, NULL, NULL, APR_HOOK_LAST);
    ap_hook_fixups(mp_fixups, NULL, before_rewrite, APR_HOOK_FIRST);
    ap_hook_handler(mp_handler, NULL, NULL, APR_HOOK_FIRST);
}

/* ---------------------------------------------------------------- module -- */

AP_DECLARE_MODULE(passenger) = {
    STANDARD20_MODULE_STUFF,
    mp_create_dir_config,    /* per-directory config: create */
    mp_merge_dir_config,     /* per-directory config: merge */
    mp_create_server_config, /* per-server config: create */
    mp_merge_server_config,  /* per-server config: merge */
    mp_commands,             /* the directive table */
    mp_register_hooks,       /* hooks */
    AP_MODULE_FLAG_NONE,
};

/*
 * Directive handling: the command table, one setter per arity, and
 * create/merge of the server and per-directory configs.
 *
 * The directive table lives in Rust (src/config/table.rs). From it, the
 * build generates $OUT_DIR/mp_directives.inc, included below: one
 * mp_field descriptor per directive (where its value lives) and the
 * command_rec table (every name and alias). This file is the mechanical
 * rest, in httpd style:
 *
 * - Every directive is offered to Apache in every context (MP_CMD_WHERE).
 *   The setter tells Rust where it appears and with which arguments
 *   (mp_directive_check); Rust checks the context and the value against the
 *   table, so the message can name the directive and say what is allowed,
 *   where Apache would only say "not allowed here".
 * - Values are stored by kind through the descriptor's offset: flags and
 *   choices as int32_t, integers as int64_t, strings, lists. Unset values
 *   are explicit sentinels (ffi/mp_config.h), so a merge is "the child's
 *   value if set, else the parent's", into a new struct from the merge pool.
 * - Global directives are stored in the main server's config even when they
 *   appear inside <VirtualHost>: as in Phusion Passenger they apply
 *   server-wide (Rust returns a warning saying so). A vhost's server config
 *   is a merge of the main one, so every server_rec sees the same values.
 */

#include <string.h>

#include "httpd.h"

#include "http_config.h"
#include "http_core.h"
#include "http_log.h"

#include "apr_strings.h"
#include "apr_tables.h"

#include "passenger_ffi.h"

#include "mp_config.h"

APLOG_USE_MODULE(passenger);

/* How a directive's value is stored (see ffi/mp_config.h). */
enum { MP_STORE_NONE, MP_STORE_I32, MP_STORE_I64, MP_STORE_STR, MP_STORE_LIST };

/* Where one directive's value lives. Generated, one per directive; the
 * command_rec of the directive and of its aliases points to it (cmd_data). */
typedef struct mp_field {
    uint32_t id;    /* MP_DIRECTIVE_*, the row in the table */
    uint8_t store;  /* MP_STORE_* */
    uint8_t global; /* stored in mp_server_config (else mp_dir_config) */
    uint8_t path;   /* a path: made absolute against ServerRoot */
    size_t offset;  /* of the field in its struct */
} mp_field;

/* Everywhere, .htaccess included (any AllowOverride class): the setter and
 * Rust decide what is allowed where. */
#define MP_CMD_WHERE (RSRC_CONF | ACCESS_CONF | OR_ALL)

static const char *mp_set_take1(cmd_parms *cmd, void *dir, const char *arg);
static const char *mp_set_take2(cmd_parms *cmd, void *dir, const char *arg1, const char *arg2);
static const char *mp_set_raw_args(cmd_parms *cmd, void *dir, const char *args);

/* mp_fields[] and mp_commands[], generated from src/config/table.rs. */
#include "mp_directives.inc"

#define MP_FIELD(cfg, f, type) ((type *)((char *)(cfg) + (f)->offset))

/* The main server's config, where global directives are stored. Set when
 * Apache creates the main server's config at the start of every
 * configuration read; read only by the setters of global directives during
 * that same (single-threaded) read. Never used for requests. */
static mp_server_config *mp_main_config = NULL;

/* --------------------------------------------------------- create/merge -- */

/* Sets the int fields of a fresh (zeroed) struct to their unset sentinels;
 * zeroed strings and lists already mean unset. */
static void mp_unset_fields(void *cfg, int global)
{
    for (size_t i = 0; i < MP_DIRECTIVE_COUNT; i++) {
        const mp_field *f = &mp_fields[i];
        if (f->global != global) {
            continue;
        }
        switch (f->store) {
        case MP_STORE_I32:
            *MP_FIELD(cfg, f, int32_t) = MP_UNSET;
            break;
        case MP_STORE_I64:
            *MP_FIELD(cfg, f, int64_t) = MP_UNSET_INT;
            break;
        default:
            break;
        }
    }
}

/* A new struct from `p`: per field, `add`'s value when set, else `base`'s.
 * A set list in `add` replaces `base`'s (it is not appended to). */
static void *mp_merge(apr_pool_t *p, const void *base, const void *add, size_t size, int global)
{
    void *out = apr_pcalloc(p, size);
    for (size_t i = 0; i < MP_DIRECTIVE_COUNT; i++) {
        const mp_field *f = &mp_fields[i];
        if (f->global != global) {
            continue;
        }
        switch (f->store) {
        case MP_STORE_I32: {
            int32_t v = *MP_FIELD(add, f, const int32_t);
            *MP_FIELD(out, f, int32_t) = v != MP_UNSET ? v : *MP_FIELD(base, f, const int32_t);
            break;
        }
        case MP_STORE_I64: {
            int64_t v = *MP_FIELD(add, f, const int64_t);
            *MP_FIELD(out, f, int64_t) = v != MP_UNSET_INT ? v : *MP_FIELD(base, f, const int64_t);
            break;
        }
        case MP_STORE_STR: {
            const char *v = *MP_FIELD(add, f, const char *const);
            *MP_FIELD(out, f, const char *) = v ? v : *MP_FIELD(base, f, const char *const);
            break;
        }
        case MP_STORE_LIST: {
            const mp_str_list *v = MP_FIELD(add, f, const mp_str_list);
            *MP_FIELD(out, f, mp_str_list) = v->items ? *v : *MP_FIELD(base, f, const mp_str_list);
            break;
        }
        default:
            break;
        }
    }
    return out;
}

void *mp_create_server_config(apr_pool_t *p, server_rec *s)
{
    mp_server_config *c = apr_pcalloc(p, sizeof *c);
    mp_unset_fields(c, 1);
    if (!s->is_virtual) {
        mp_main_config = c;
    }
    return c;
}

void *mp_merge_server_config(apr_pool_t *p, void *base, void *add)
{
    return mp_merge(p, base, add, sizeof(mp_server_config), 1);
}

void *mp_create_dir_config(apr_pool_t *p, char *dir)
{
    (void)dir;
    mp_dir_config *c = apr_pcalloc(p, sizeof *c);
    mp_unset_fields(c, 0);
    return c;
}

void *mp_merge_dir_config(apr_pool_t *p, void *base, void *add)
{
    return mp_merge(p, base, add, sizeof(mp_dir_config), 0);
}

/* -------------------------------------------------------------- setters -- */

/* Sections in which application and location directives make no sense. */
static const char *const mp_other_sections[] = {
    "<Files", "<FilesMatch", "<If", "<ElseIf", "<Else", "<Limit", "<LimitExcept",
    "<Proxy", "<ProxyMatch", NULL,
};

/* Where the directive being parsed appears: MP_SECTION_*, and for
 * .htaccess whether `AllowOverride Options` applies. */
static uint32_t mp_section(const cmd_parms *cmd, uint32_t *flags)
{
    *flags = 0;
    /* .htaccess is parsed with the request pool as both pools; this is how
     * httpd itself tells (ap_check_cmd_context, NOT_IN_HTACCESS). */
    if (cmd->pool == cmd->temp_pool) {
        if ((cmd->override & OR_OPTIONS) ||
            (cmd->override_list && apr_table_get(cmd->override_list, cmd->cmd->name))) {
            *flags |= MP_SITE_HTACCESS_OPTIONS;
        }
        return MP_SECTION_HTACCESS;
    }
    if (cmd->limited != -1) {
        return MP_SECTION_OTHER;
    }
    for (const ap_directive_t *d = cmd->directive ? cmd->directive->parent : NULL; d; d = d->parent) {
        for (const char *const *name = mp_other_sections; *name; name++) {
            if (strcasecmp(d->directive, *name) == 0) {
                return MP_SECTION_OTHER;
            }
        }
    }
    if (cmd->path) {
        return MP_SECTION_DIR;
    }
    return cmd->server->is_virtual ? MP_SECTION_VHOST : MP_SECTION_SERVER;
}

/* Warnings kept until the configuration is processed (see mp_warn). */
typedef struct mp_warning {
    const server_rec *server;
    const char *text;
} mp_warning;

#define MP_WARNINGS_KEY "mod_passenger:config-warnings"

/* Logs the kept warnings, in order: a cleanup of the configuration's
 * temporary pool, which httpd destroys after open_logs and post_config, so
 * they reach the error log. */
static apr_status_t mp_log_kept_warnings(void *data)
{
    const apr_array_header_t *warnings = data;
    for (int i = 0; i < warnings->nelts; i++) {
        const mp_warning *w = &APR_ARRAY_IDX(warnings, i, mp_warning);
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, w->server, "%s", w->text);
    }
    return APR_SUCCESS;
}

/* Logs the warnings from mp_directive_check: one per line, each starting
 * with its MP10xx tag, followed by where the directive is. */
static void mp_warn(const cmd_parms *cmd, uint32_t section, const char *msg)
{
    const char *file = cmd->directive ? cmd->directive->filename : "?";
    int line = cmd->directive ? cmd->directive->line_num : 0;
    int run_mode = ap_state_query(AP_SQ_RUN_MODE);
    apr_array_header_t *kept = NULL;

    if (section == MP_SECTION_HTACCESS) {
        /* Read again on every request: keep it out of the log unless asked. */
        for (const char *p = msg; *p;) {
            size_t len = strcspn(p, "\n");
            ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, cmd->server, "%.*s (%s:%d)", (int)len, p, file, line);
            p += len + (p[len] == '\n');
        }
        return;
    }
    if (run_mode == AP_SQ_RM_NORMAL) {
        /* At startup Apache reads its configuration twice; the first read is
         * a dry run, and the second runs after the MPM has detached from the
         * terminal but before the error log is open. So: nothing from the
         * dry run, and keep the rest until the logs are open. Each restart's
         * read logs again. */
        if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG) {
            return;
        }
        void *data = NULL;
        apr_pool_userdata_get(&data, MP_WARNINGS_KEY, cmd->temp_pool);
        kept = data;
        if (!kept) {
            kept = apr_array_make(cmd->temp_pool, 4, sizeof(mp_warning));
            apr_pool_userdata_setn(kept, MP_WARNINGS_KEY, NULL, cmd->temp_pool);
            apr_pool_cleanup_register(cmd->temp_pool, kept, mp_log_kept_warnings,
                                      apr_pool_cleanup_null);
        }
    }
    while (*msg) {
        size_t len = strcspn(msg, "\n");
        const char *text = apr_psprintf(cmd->temp_pool, "%.*s (%s:%d)", (int)len, msg, file, line);
        if (kept) {
            mp_warning *w = apr_array_push(kept);
            w->server = cmd->server;
            w->text = text;
        } else {
            /* A configuration test: report now, on stderr. A vhost's log
             * level is not set before the merge, so log those without a
             * server (the default level, to stderr). */
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, cmd->server->is_virtual ? NULL : cmd->server,
                         "%s", text);
        }
        msg += len + (msg[len] == '\n');
    }
}

/* Appends one item (two for PassengerCtl) to a list, copying the array into
 * `p`, so a list inherited from a parent section is never changed. */
static void mp_list_append(apr_pool_t *p, mp_str_list *list, const char *a, const char *b)
{
    uint32_t n = b ? 2 : 1;
    const char **items = apr_palloc(p, sizeof *items * (list->len + n));
    if (list->len) {
        memcpy(items, list->items, sizeof *items * list->len);
    }
    items[list->len] = a;
    if (b) {
        items[list->len + 1] = b;
    }
    list->items = items;
    list->len += n;
}

/* Checks a directive through Rust, then stores its value by kind. */
static const char *mp_set(cmd_parms *cmd, void *dir, const char *arg1, const char *arg2)
{
    const mp_field *f = cmd->info;
    uint32_t flags = 0;
    uint32_t section = mp_section(cmd, &flags);
    int64_t number = 0;
    char msg[1024];
    msg[0] = '\0';

    mp_directive_verdict verdict = mp_directive_check(f->id, cmd->cmd->name, section, flags, arg1,
                                                      arg2, &number, msg, sizeof msg);
    if (verdict == MP_DIRECTIVE_REFUSE) {
        return apr_pstrdup(cmd->pool, msg[0] ? msg : "mod_passenger refused this directive");
    }
    if (verdict == MP_DIRECTIVE_WARN) {
        mp_warn(cmd, section, msg);
    }
    if (f->store == MP_STORE_NONE) {
        return NULL;
    }

    void *cfg = dir;
    if (f->global) {
        /* Rust refuses global directives elsewhere; never write the shared
         * server config from a directory section or a request. */
        if (section != MP_SECTION_SERVER && section != MP_SECTION_VHOST) {
            return apr_pstrcat(cmd->pool, cmd->cmd->name, " is a global directive", NULL);
        }
        cfg = mp_main_config ? (void *)mp_main_config
                             : ap_get_module_config(cmd->server->module_config, &passenger_module);
    }

    switch (f->store) {
    case MP_STORE_I32:
        *MP_FIELD(cfg, f, int32_t) = (int32_t)number;
        break;
    case MP_STORE_I64:
        *MP_FIELD(cfg, f, int64_t) = number;
        break;
    case MP_STORE_STR: {
        const char *value = arg1;
        if (f->path) {
            value = ap_server_root_relative(cmd->pool, arg1);
            if (!value) {
                return apr_pstrcat(cmd->pool, cmd->cmd->name, ": \"", arg1,
                                   "\" is not a valid path", NULL);
            }
        }
        *MP_FIELD(cfg, f, const char *) = value;
        break;
    }
    case MP_STORE_LIST:
        mp_list_append(cmd->pool, MP_FIELD(cfg, f, mp_str_list), arg1, arg2);
        break;
    default:
        break;
    }
    return NULL;
}

static const char *mp_set_take1(cmd_parms *cmd, void *dir, const char *arg)
{
    return mp_set(cmd, dir, arg, NULL);
}

static const char *mp_set_take2(cmd_parms *cmd, void *dir, const char *arg1, const char *arg2)
{
    return mp_set(cmd, dir, arg1, arg2);
}

/* Obsolete and removed directives: any arguments, passed as one string. */
static const char *mp_set_raw_args(cmd_parms *cmd, void *dir, const char *args)
{
    return mp_set(cmd, dir, args, NULL);
}

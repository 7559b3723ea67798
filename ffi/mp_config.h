/*
 * The configuration structs shared by the shim and Rust, and the directive
 * check that Rust exports.
 *
 * GENERATED from src/config/table.rs by src/config/codegen.rs (run by
 * build.rs); do not edit. After changing the table, run `MP_REGENERATE=1
 * cargo build`.
 *
 * How values are stored (the shim creates, sets and merges these structs in
 * mod_passenger/mp_config.c; Rust copies them in src/ffi/config.rs):
 * - flags and choices: int32_t, MP_UNSET when unset; a flag is 0 or 1, a
 *   choice is the index of the accepted word in the table's list;
 * - integers: int64_t, MP_UNSET_INT when unset;
 * - text and paths: NUL-terminated strings allocated from an APR pool
 *   (pconf, or the request pool for .htaccess), NULL when unset; relative
 *   paths are already made absolute against ServerRoot;
 * - repeatable directives: mp_str_list, items == NULL when unset.
 * A merge takes the child's value when it is set, else the parent's; a
 * child's list replaces the parent's. Unset values get their defaults in
 * Rust, from the table.
 */
#ifndef MP_CONFIG_H
#define MP_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* The unset value of int32_t fields. */
#define MP_UNSET (-1)
/* The unset value of int64_t fields (INT64_MIN). */
#define MP_UNSET_INT (-9223372036854775807LL - 1)

/* A list of strings allocated from an APR pool; items == NULL (len 0) when
 * unset. For PassengerCtl the items alternate: name, value, name, value. */
typedef struct mp_str_list {
    const char *const *items;
    uint32_t len;
} mp_str_list;

/* Where a directive appears: mp_directive_check's `section`. */
#define MP_SECTION_SERVER 0    /* the main server config, outside any section */
#define MP_SECTION_VHOST 1     /* <VirtualHost>, outside directory sections */
#define MP_SECTION_DIR 2       /* <Directory>, <Location> and their Match forms */
#define MP_SECTION_OTHER 3     /* <Files>, <If>, <Limit>, <Proxy> and their variants */
#define MP_SECTION_HTACCESS 4  /* an .htaccess file */

/* mp_directive_check's `flags`: in .htaccess, AllowOverride grants Options
 * (or AllowOverrideList names the directive). */
#define MP_SITE_HTACCESS_OPTIONS 1

/* Every directive's number (its row in the table); the command table passes
 * it to the setters. */
#define MP_DIRECTIVE_ROOT 0
#define MP_DIRECTIVE_CTL 1
#define MP_DIRECTIVE_DUMP_CONFIG_MANIFEST 2
#define MP_DIRECTIVE_DEFAULT_RUBY 3
#define MP_DIRECTIVE_LOG_LEVEL 4
#define MP_DIRECTIVE_LOG_FILE 5
#define MP_DIRECTIVE_DISABLE_LOG_PREFIX 6
#define MP_DIRECTIVE_SOCKET_BACKLOG 7
#define MP_DIRECTIVE_FILE_DESCRIPTOR_LOG_FILE 8
#define MP_DIRECTIVE_MAX_POOL_SIZE 9
#define MP_DIRECTIVE_POOL_IDLE_TIME 10
#define MP_DIRECTIVE_RESPONSE_BUFFER_HIGH_WATERMARK 11
#define MP_DIRECTIVE_USER_SWITCHING 12
#define MP_DIRECTIVE_DEFAULT_USER 13
#define MP_DIRECTIVE_DEFAULT_GROUP 14
#define MP_DIRECTIVE_DATA_BUFFER_DIR 15
#define MP_DIRECTIVE_INSTANCE_REGISTRY_DIR 16
#define MP_DIRECTIVE_SPAWN_DIR 17
#define MP_DIRECTIVE_DISABLE_SECURITY_UPDATE_CHECK 18
#define MP_DIRECTIVE_SECURITY_UPDATE_CHECK_PROXY 19
#define MP_DIRECTIVE_DISABLE_ANONYMOUS_TELEMETRY 20
#define MP_DIRECTIVE_ANONYMOUS_TELEMETRY_PROXY 21
#define MP_DIRECTIVE_STAT_THROTTLE_RATE 22
#define MP_DIRECTIVE_PRE_START 23
#define MP_DIRECTIVE_TURBOCACHING 24
#define MP_DIRECTIVE_SHOW_VERSION_IN_HEADER 25
#define MP_DIRECTIVE_MAX_INSTANCES_PER_APP 26
#define MP_DIRECTIVE_ADMIN_PANEL_URL 27
#define MP_DIRECTIVE_ADMIN_PANEL_AUTH_TYPE 28
#define MP_DIRECTIVE_ADMIN_PANEL_USERNAME 29
#define MP_DIRECTIVE_ADMIN_PANEL_PASSWORD 30
#define MP_DIRECTIVE_FLY_WITH 31
#define MP_DIRECTIVE_APP_ROOT 32
#define MP_DIRECTIVE_APP_TYPE 33
#define MP_DIRECTIVE_APP_START_COMMAND 34
#define MP_DIRECTIVE_STARTUP_FILE 35
#define MP_DIRECTIVE_APP_ENV 36
#define MP_DIRECTIVE_APP_GROUP_NAME 37
#define MP_DIRECTIVE_BASE_URI 38
#define MP_DIRECTIVE_RUBY 39
#define MP_DIRECTIVE_PYTHON 40
#define MP_DIRECTIVE_NODEJS 41
#define MP_DIRECTIVE_METEOR_APP_SETTINGS 42
#define MP_DIRECTIVE_MIN_INSTANCES 43
#define MP_DIRECTIVE_MAX_REQUESTS 44
#define MP_DIRECTIVE_START_TIMEOUT 45
#define MP_DIRECTIVE_MAX_REQUEST_QUEUE_SIZE 46
#define MP_DIRECTIVE_MAX_PRELOADER_IDLE_TIME 47
#define MP_DIRECTIVE_SPAWN_METHOD 48
#define MP_DIRECTIVE_LOAD_SHELL_ENVVARS 49
#define MP_DIRECTIVE_PRELOAD_BUNDLER 50
#define MP_DIRECTIVE_USER 51
#define MP_DIRECTIVE_GROUP 52
#define MP_DIRECTIVE_RESTART_DIR 53
#define MP_DIRECTIVE_FRIENDLY_ERROR_PAGES 54
#define MP_DIRECTIVE_CUSTOM_ERROR_PAGE 55
#define MP_DIRECTIVE_DIRECT_INSTANCE_REQUEST_ADDRESS 56
#define MP_DIRECTIVE_FORCE_MAX_CONCURRENT_REQUESTS_PER_PROCESS 57
#define MP_DIRECTIVE_LVE_MIN_UID 58
#define MP_DIRECTIVE_MONITOR_LOG_FILE 59
#define MP_DIRECTIVE_MEMORY_LIMIT 60
#define MP_DIRECTIVE_MAX_INSTANCES 61
#define MP_DIRECTIVE_ROLLING_RESTARTS 62
#define MP_DIRECTIVE_RESIST_DEPLOYMENT_ERRORS 63
#define MP_DIRECTIVE_DEBUGGER 64
#define MP_DIRECTIVE_CONCURRENCY_MODEL 65
#define MP_DIRECTIVE_THREAD_COUNT 66
#define MP_DIRECTIVE_APP_LOG_FILE 67
#define MP_DIRECTIVE_ENABLED 68
#define MP_DIRECTIVE_HIGH_PERFORMANCE 69
#define MP_DIRECTIVE_ERROR_OVERRIDE 70
#define MP_DIRECTIVE_BUFFER_UPLOAD 71
#define MP_DIRECTIVE_BUFFER_RESPONSE 72
#define MP_DIRECTIVE_STICKY_SESSIONS 73
#define MP_DIRECTIVE_STICKY_SESSIONS_COOKIE_NAME 74
#define MP_DIRECTIVE_STICKY_SESSIONS_COOKIE_ATTRIBUTES 75
#define MP_DIRECTIVE_ALLOW_ENCODED_SLASHES 76
#define MP_DIRECTIVE_MAX_REQUEST_TIME 77
#define MP_DIRECTIVE_MAX_REQUEST_QUEUE_TIME 78
#define MP_DIRECTIVE_RAILS_SPAWN_SERVER 79
#define MP_DIRECTIVE_RAILS_ALLOW_MOD_REWRITE 80
#define MP_DIRECTIVE_RAILS_FRAMEWORK_SPAWNER_IDLE_TIME 81
#define MP_DIRECTIVE_USE_GLOBAL_QUEUE 82
#define MP_DIRECTIVE_UNION_STATION_GATEWAY_ADDRESS 83
#define MP_DIRECTIVE_UNION_STATION_GATEWAY_PORT 84
#define MP_DIRECTIVE_UNION_STATION_GATEWAY_CERT 85
#define MP_DIRECTIVE_UNION_STATION_PROXY_ADDRESS 86
#define MP_DIRECTIVE_UNION_STATION_KEY 87
#define MP_DIRECTIVE_UNION_STATION_FILTER 88
#define MP_DIRECTIVE_UNION_STATION_SUPPORT 89
#define MP_DIRECTIVE_ANALYTICS_LOG_USER 90
#define MP_DIRECTIVE_ANALYTICS_LOG_GROUP 91
#define MP_DIRECTIVE_RESOLVE_SYMLINKS_IN_DOCUMENT_ROOT 92
#define MP_DIRECTIVE_RAILS_AUTO_DETECT 93
#define MP_DIRECTIVE_RACK_AUTO_DETECT 94
#define MP_DIRECTIVE_WSGI_AUTO_DETECT 95
#define MP_DIRECTIVE_COUNT 96

/* Server-wide (global) directives: one per server, all vhosts share the main server's values. */
typedef struct mp_server_config {
    /* PassengerRoot: a path (relative: to ServerRoot); default: the directory of mod_passenger.so, then the installed location */
    const char *root;
    /* PassengerCtl: a name and a value; repeatable; default: none */
    mp_str_list ctl;
    /* PassengerDumpConfigManifest: a path (relative: to ServerRoot); default: none */
    const char *dump_config_manifest;
    /* PassengerDefaultRuby: text; default: ruby */
    const char *default_ruby;
    /* PassengerLogLevel: an integer from 0 to 7; default: 3 */
    int64_t log_level;
    /* PassengerLogFile (PassengerDebugLogFile): a path (relative: to ServerRoot); default: Apache's main ErrorLog */
    const char *log_file;
    /* PassengerDisableLogPrefix: On or Off; default: off */
    int32_t disable_log_prefix;
    /* PassengerSocketBacklog: an integer of at least 0 (connections); default: 2048 */
    int64_t socket_backlog;
    /* PassengerFileDescriptorLogFile: a path (relative: to ServerRoot); default: none */
    const char *file_descriptor_log_file;
    /* PassengerMaxPoolSize (RailsMaxPoolSize): an integer of at least 1 (processes); default: 6 */
    int64_t max_pool_size;
    /* PassengerPoolIdleTime (RailsPoolIdleTime): an integer of at least 0 (seconds); default: 300 */
    int64_t pool_idle_time;
    /* PassengerResponseBufferHighWatermark: an integer of at least 0 (bytes); default: 134217728 */
    int64_t response_buffer_high_watermark;
    /* PassengerUserSwitching (RailsUserSwitching): On or Off; default: on */
    int32_t user_switching;
    /* PassengerDefaultUser (RailsDefaultUser): text; default: nobody */
    const char *default_user;
    /* PassengerDefaultGroup: text; default: the primary group of PassengerDefaultUser */
    const char *default_group;
    /* PassengerDataBufferDir: a path (relative: to ServerRoot); default: $TMPDIR, else /tmp */
    const char *data_buffer_dir;
    /* PassengerInstanceRegistryDir: a path (relative: to ServerRoot); default: $TMPDIR, else /tmp */
    const char *instance_registry_dir;
    /* PassengerSpawnDir: a path (relative: to ServerRoot); default: $TMPDIR, else /tmp */
    const char *spawn_dir;
    /* PassengerDisableSecurityUpdateCheck: On or Off; default: off */
    int32_t disable_security_update_check;
    /* PassengerSecurityUpdateCheckProxy: text; default: none */
    const char *security_update_check_proxy;
    /* PassengerDisableAnonymousTelemetry: On or Off; default: off */
    int32_t disable_anonymous_telemetry;
    /* PassengerAnonymousTelemetryProxy: text; default: none */
    const char *anonymous_telemetry_proxy;
    /* PassengerStatThrottleRate: an integer of at least 0 (seconds); default: 10 */
    int64_t stat_throttle_rate;
    /* PassengerPreStart: an http:// or https:// URL; repeatable; default: none */
    mp_str_list prestart_urls;
    /* PassengerTurbocaching: On or Off; default: on */
    int32_t turbocaching;
    /* PassengerShowVersionInHeader: On or Off; default: on */
    int32_t show_version_in_header;
    /* PassengerMaxInstancesPerApp (RailsMaxInstancesPerApp): an integer of at least 0 (processes); default: 0 */
    int64_t max_instances_per_app;
    /* PassengerAdminPanelUrl: text; default: none */
    const char *admin_panel_url;
    /* PassengerAdminPanelAuthType: text; default: none */
    const char *admin_panel_auth_type;
    /* PassengerAdminPanelUsername: text; default: none */
    const char *admin_panel_username;
    /* PassengerAdminPanelPassword: text; default: none */
    const char *admin_panel_password;
    /* PassengerFlyWith: a path (relative: to ServerRoot); default: none */
    const char *fly_with;
} mp_server_config;

/* Per-directory (application and location) directives, merged by Apache per request. */
typedef struct mp_dir_config {
    /* PassengerAppRoot: a path (relative: to ServerRoot); default: the parent of the document root (or of document root + base URI) */
    const char *app_root;
    /* PassengerAppType: rack | wsgi | node | meteor; index: 0 rack, 1 wsgi, 2 node, 3 meteor, 4 ruby, 5 python, 6 nodejs; default: autodetected from the files in the app root */
    int32_t app_type;
    /* PassengerAppStartCommand: text; default: none */
    const char *app_start_command;
    /* PassengerStartupFile: text; default: config.ru, passenger_wsgi.py, app.js or .meteor, by type */
    const char *startup_file;
    /* PassengerAppEnv (RailsEnv, RackEnv): text; default: production */
    const char *app_env;
    /* PassengerAppGroupName: text; default: "<app root> (<environment>)" */
    const char *app_group_name;
    /* PassengerBaseURI (RailsBaseURI, RackBaseURI): a URI path such as /app; repeatable; default: none */
    mp_str_list base_uris;
    /* PassengerRuby (RailsRuby): text; default: PassengerDefaultRuby */
    const char *ruby;
    /* PassengerPython: text; default: python3, then python */
    const char *python;
    /* PassengerNodejs: text; default: node */
    const char *nodejs;
    /* PassengerMeteorAppSettings: a path (relative: to ServerRoot); default: none */
    const char *meteor_app_settings;
    /* PassengerMinInstances: an integer of at least 0 (processes); default: 1 */
    int64_t min_instances;
    /* PassengerMaxRequests: an integer of at least 0 (requests); default: 0 */
    int64_t max_requests;
    /* PassengerStartTimeout: an integer of at least 1 (seconds); default: 90 */
    int64_t start_timeout;
    /* PassengerMaxRequestQueueSize: an integer of at least 0 (requests); default: 100 */
    int64_t max_request_queue_size;
    /* PassengerMaxPreloaderIdleTime (RailsAppSpawnerIdleTime): an integer of at least 0 (seconds); default: 300 */
    int64_t max_preloader_idle_time;
    /* PassengerSpawnMethod (RailsSpawnMethod): smart | direct; index: 0 smart, 1 direct, 2 smart-lv2, 3 conservative; default: smart for Ruby apps, direct otherwise */
    int32_t spawn_method;
    /* PassengerLoadShellEnvvars: On or Off; default: on */
    int32_t load_shell_envvars;
    /* PassengerPreloadBundler: On or Off; default: off */
    int32_t preload_bundler;
    /* PassengerUser: text; default: see PassengerUserSwitching */
    const char *user;
    /* PassengerGroup: text; default: the primary group of the application's user */
    const char *group;
    /* PassengerRestartDir: text; default: tmp, in the app root */
    const char *restart_dir;
    /* PassengerFriendlyErrorPages: On or Off; default: on when the environment is development, else off */
    int32_t friendly_error_pages;
    /* PassengerCustomErrorPage: a path (relative: to ServerRoot); default: none */
    const char *custom_error_page;
    /* PassengerDirectInstanceRequestAddress: text; default: 127.0.0.1 */
    const char *direct_instance_request_address;
    /* PassengerForceMaxConcurrentRequestsPerProcess: an integer of at least -1 (requests); default: -1 */
    int64_t force_max_concurrent_requests_per_process;
    /* PassengerLveMinUid: an integer of at least 0; default: 500 */
    int64_t lve_min_uid;
    /* PassengerMonitorLogFile: text; repeatable; default: none */
    mp_str_list monitor_log_files;
    /* PassengerMemoryLimit: an integer of at least 0 (MB); default: 0 */
    int64_t memory_limit;
    /* PassengerMaxInstances: an integer of at least 0 (processes); default: 0 */
    int64_t max_instances;
    /* PassengerRollingRestarts: On or Off; default: off */
    int32_t rolling_restarts;
    /* PassengerResistDeploymentErrors: On or Off; default: off */
    int32_t resist_deployment_errors;
    /* PassengerDebugger: On or Off; default: off */
    int32_t debugger;
    /* PassengerConcurrencyModel: process | thread; index: 0 process, 1 thread; default: process */
    int32_t concurrency_model;
    /* PassengerThreadCount: an integer of at least 1 (threads); default: 1 */
    int64_t thread_count;
    /* PassengerAppLogFile: a path (relative: to ServerRoot); default: PassengerLogFile */
    const char *app_log_file;
    /* PassengerEnabled: On or Off; default: on */
    int32_t enabled;
    /* PassengerHighPerformance: On or Off; default: off */
    int32_t high_performance;
    /* PassengerErrorOverride: On or Off; default: off */
    int32_t error_override;
    /* PassengerBufferUpload: On or Off; default: on */
    int32_t buffer_upload;
    /* PassengerBufferResponse: On or Off; default: off */
    int32_t buffer_response;
    /* PassengerStickySessions: On or Off; default: off */
    int32_t sticky_sessions;
    /* PassengerStickySessionsCookieName: text; default: _passenger_route */
    const char *sticky_sessions_cookie_name;
    /* PassengerStickySessionsCookieAttributes: text; default: SameSite=Lax; Secure; */
    const char *sticky_sessions_cookie_attributes;
    /* PassengerAllowEncodedSlashes: On or Off; default: off */
    int32_t allow_encoded_slashes;
    /* PassengerMaxRequestTime: an integer of at least 0 (seconds); default: 0 */
    int64_t max_request_time;
    /* PassengerMaxRequestQueueTime: an integer of at least 0 (seconds); default: 0 */
    int64_t max_request_queue_time;
} mp_dir_config;

/* What mp_directive_check decided. */
typedef enum mp_directive_verdict {
    MP_DIRECTIVE_OK = 0,    /* store the value */
    MP_DIRECTIVE_WARN = 1,  /* store the value, and log msg (a tagged warning) */
    MP_DIRECTIVE_REFUSE = 2 /* refuse the directive: msg is Apache's error message */
} mp_directive_verdict;

/*
 * Checks one use of a directive, when Apache parses it: the place (`section`,
 * `flags`) against the directive's context, and the arguments against its
 * type and bounds. The table's rules live in Rust only.
 *
 * id:      MP_DIRECTIVE_*, from the command's cmd_data.
 * name:    the name as written (an alias, maybe), for messages.
 * arg1/2:  the arguments (arg2 only for PassengerCtl; NULL otherwise).
 * number:  on OK/WARN, what to store for flags (0/1), choices (the index)
 *          and integers; untouched for other kinds. Must not be NULL.
 * msg:     on WARN and REFUSE, a NUL-terminated message (truncated to
 *          msglen bytes); on OK, an empty string. Must not be NULL.
 *
 * All pointers are borrowed for the call. Never unwinds: a NULL pointer
 * or a bug gives REFUSE with a message. Thread: any (.htaccess files are
 * parsed by worker threads).
 */
mp_directive_verdict mp_directive_check(uint32_t id, const char *name, uint32_t section,
                                         uint32_t flags, const char *arg1, const char *arg2,
                                         int64_t *number, char *msg, size_t msglen);

#endif /* MP_CONFIG_H */

//! The directive table: every `Passenger*` directive, declared once.
//!
//! Each row gives a directive's name, aliases, context, value type, bounds,
//! default and documentation. Everything else is derived from it:
//!
//! - `build/directives.rs` generates the C command table and the field
//!   descriptors the shim merges with (`$OUT_DIR/mp_directives.inc`), and the
//!   Rust code that reads the C structs (`$OUT_DIR/mp_config_fields.rs`);
//! - the same generator writes `ffi/mp_config.h` (the structs) and
//!   `docs/directives.md`, which are committed; the build fails if the
//!   header is stale and a test fails if the docs are
//!   (`MP_REGENERATE=1 cargo build` rewrites both);
//! - [`super::value`] checks values and contexts against it, when Apache
//!   parses a directive and when the agent decodes an app's options.
//!
//! This file uses nothing but `core`: the build script compiles it too.

/// Identifies a directive: its row in [`DIRECTIVES`], and its number across
/// the FFI (`MP_DIRECTIVE_*` in `ffi/mp_config.h`).
///
/// A variant is named after its directive without the `Passenger` prefix
/// (a test checks this). New directives go at the end of their group; the
/// numbers are rebuilt with the module, never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
#[allow(missing_docs)] // each variant is documented by its row in DIRECTIVES
pub enum Id {
    // Global (server-wide).
    Root,
    Ctl,
    DumpConfigManifest,
    DefaultRuby,
    LogLevel,
    LogFile,
    DisableLogPrefix,
    SocketBacklog,
    FileDescriptorLogFile,
    MaxPoolSize,
    PoolIdleTime,
    ResponseBufferHighWatermark,
    UserSwitching,
    DefaultUser,
    DefaultGroup,
    DataBufferDir,
    InstanceRegistryDir,
    SpawnDir,
    DisableSecurityUpdateCheck,
    SecurityUpdateCheckProxy,
    DisableAnonymousTelemetry,
    AnonymousTelemetryProxy,
    StatThrottleRate,
    PreStart,
    Turbocaching,
    ShowVersionInHeader,
    MaxInstancesPerApp,
    AdminPanelUrl,
    AdminPanelAuthType,
    AdminPanelUsername,
    AdminPanelPassword,
    FlyWith,
    // Per application.
    AppRoot,
    AppType,
    AppStartCommand,
    StartupFile,
    AppEnv,
    AppGroupName,
    BaseURI,
    Ruby,
    Python,
    Nodejs,
    MeteorAppSettings,
    MinInstances,
    MaxRequests,
    StartTimeout,
    MaxRequestQueueSize,
    MaxPreloaderIdleTime,
    SpawnMethod,
    LoadShellEnvvars,
    PreloadBundler,
    User,
    Group,
    RestartDir,
    FriendlyErrorPages,
    CustomErrorPage,
    DirectInstanceRequestAddress,
    ForceMaxConcurrentRequestsPerProcess,
    LveMinUid,
    MonitorLogFile,
    MemoryLimit,
    MaxInstances,
    RollingRestarts,
    ResistDeploymentErrors,
    Debugger,
    ConcurrencyModel,
    ThreadCount,
    AppLogFile,
    // Per location (.htaccess capable).
    Enabled,
    HighPerformance,
    ErrorOverride,
    BufferUpload,
    BufferResponse,
    StickySessions,
    StickySessionsCookieName,
    StickySessionsCookieAttributes,
    AllowEncodedSlashes,
    MaxRequestTime,
    MaxRequestQueueTime,
    // Obsolete: accepted with a warning, ignored.
    RailsSpawnServer,
    RailsAllowModRewrite,
    RailsFrameworkSpawnerIdleTime,
    UseGlobalQueue,
    UnionStationGatewayAddress,
    UnionStationGatewayPort,
    UnionStationGatewayCert,
    UnionStationProxyAddress,
    UnionStationKey,
    UnionStationFilter,
    UnionStationSupport,
    AnalyticsLogUser,
    AnalyticsLogGroup,
    // Removed: refused with a hint.
    ResolveSymlinksInDocumentRoot,
    RailsAutoDetect,
    RackAutoDetect,
    WsgiAutoDetect,
}

/// Where a directive may appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// Server-wide: the main server config. Accepted inside `<VirtualHost>`
    /// (as Phusion Passenger does) with a warning, and still applies to the
    /// whole server. Refused inside `<Directory>`, `<Location>`, `<Files>`
    /// and in `.htaccess`.
    Global,
    /// Per application: the server config, `<VirtualHost>`, `<Directory>`
    /// and `<Location>`; not `<Files>`/`<If>`, not `.htaccess`.
    App,
    /// Per location: as [`Context::App`], and also `.htaccess` when
    /// `AllowOverride` grants the class.
    Location(Override),
    /// Anywhere, `.htaccess` included (obsolete and removed directives).
    Anywhere,
}

/// The `AllowOverride` class that lets a per-location directive into `.htaccess`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    /// Any class (`AllowOverride All`, `FileInfo`, `Options`, ...).
    All,
    /// `AllowOverride Options` (or the directive in `AllowOverrideList`).
    Options,
}

/// One element of a repeatable directive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// Any non-empty text.
    Text,
    /// A URI path: starts with `/`, no trailing `/` (a lone `/` is accepted and ignored).
    BaseUri,
    /// An `http://` or `https://` URL.
    Url,
}

/// A directive's value type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `On` or `Off` (any case).
    Flag,
    /// A decimal integer within bounds.
    Int {
        /// The smallest value allowed.
        min: i64,
        /// The largest value allowed.
        max: i64,
        /// What the number counts, for the docs ("seconds", "MB", ...; "" for none).
        unit: &'static str,
    },
    /// One word out of a list (any case): `(accepted word, canonical value)`.
    /// The canonical values are the words to advertise; other words are aliases.
    Choice(&'static [(&'static str, &'static str)]),
    /// Any non-empty text.
    Text,
    /// A filesystem path; relative paths are taken relative to `ServerRoot`.
    Path,
    /// Repeatable: each use adds one element. A `<Directory>` that uses it
    /// replaces (does not extend) the list it inherits.
    List(Item),
    /// Two arguments, a name and a value; repeatable (`PassengerCtl`).
    KeyValue,
    /// Any arguments, ignored (obsolete and removed directives).
    Ignored,
}

/// The directive's default, as documented and as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// No value: the feature is off or the option absent.
    Unset,
    /// This value, in directive syntax; the typed configs apply it (a test
    /// checks they agree).
    Is(&'static str),
    /// Computed when needed; the text says how.
    Computed(&'static str),
}

/// How far a directive is implemented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Implemented.
    Active,
    /// Accepted and passed on, but nothing acts on it in mod_passenger;
    /// logged once at startup so nobody relies on it.
    NoEffect,
    /// Enterprise-only in Phusion Passenger; accepted and stored, logged as
    /// not active yet until mod_passenger implements it.
    Enterprise,
    /// Obsolete: accepted anywhere with a warning, and ignored.
    Obsolete,
    /// Removed from Phusion Passenger: refused, with this advice.
    Removed(&'static str),
}

/// One directive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The directive's number; equal to its index in [`DIRECTIVES`].
    pub id: Id,
    /// The canonical name, as in Phusion Passenger.
    pub name: &'static str,
    /// Other names for the same directive (`RailsEnv` for `PassengerAppEnv`, ...).
    pub aliases: &'static [&'static str],
    /// Where it may appear.
    pub context: Context,
    /// Its value type and bounds.
    pub kind: Kind,
    /// Its default.
    pub default: Fallback,
    /// How far it is implemented.
    pub status: Status,
    /// The field in the C struct (`mp_server_config` for global directives,
    /// `mp_dir_config` otherwise), the `ServerConfig` field and JSON key of
    /// a global directive; empty when nothing is stored.
    pub field: &'static str,
    /// Per-directory directives: whether `DirConfig::option_pairs` sends it
    /// to the agent (false for the ones only the module acts on).
    pub to_agent: bool,
    /// A valid value (two arguments separated by a space for
    /// [`Kind::KeyValue`]), used by the docs and the tests.
    pub example: &'static str,
    /// What it does, for the docs.
    pub doc: &'static str,
}

impl Directive {
    /// Whether the value lives in the server-wide config (else per directory).
    pub const fn is_global(&self) -> bool {
        matches!(self.context, Context::Global)
    }

    /// Whether the directive stores a value.
    pub const fn stores(&self) -> bool {
        !matches!(self.kind, Kind::Ignored)
    }

    /// Whether `name` is this directive's name or one of its aliases (any case,
    /// as Apache matches directive names).
    pub fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

impl Directive {
    /// The example as written after the directive's name in a config file:
    /// quoted when it has spaces (except the two arguments of [`Kind::KeyValue`]).
    pub fn example_args(&self) -> String {
        if self.kind != Kind::KeyValue && self.example.contains(' ') {
            format!("\"{}\"", self.example)
        } else {
            self.example.to_owned()
        }
    }
}

/// The directive with this number.
pub fn directive(id: Id) -> &'static Directive {
    &DIRECTIVES[id as usize]
}

// One argument per column keeps each row of the table readable in place.
#[allow(clippy::too_many_arguments)]
const fn row(
    id: Id,
    name: &'static str,
    context: Context,
    kind: Kind,
    default: Fallback,
    field: &'static str,
    example: &'static str,
    doc: &'static str,
) -> Directive {
    Directive {
        id,
        name,
        aliases: &[],
        context,
        kind,
        default,
        status: Status::Active,
        field,
        to_agent: !matches!(context, Context::Global | Context::Anywhere),
        example,
        doc,
    }
}

impl Directive {
    const fn aka(mut self, aliases: &'static [&'static str]) -> Directive {
        self.aliases = aliases;
        self
    }
    const fn status(mut self, status: Status) -> Directive {
        self.status = status;
        self
    }
    const fn module_only(mut self) -> Directive {
        self.to_agent = false;
        self
    }
}

const fn obsolete(id: Id, name: &'static str) -> Directive {
    Directive {
        id,
        name,
        aliases: &[],
        context: Context::Anywhere,
        kind: Kind::Ignored,
        default: Fallback::Unset,
        status: Status::Obsolete,
        field: "",
        to_agent: false,
        example: "on",
        doc: "Obsolete: accepted for compatibility with old configurations, logs a warning and \
              has no effect. Remove it.",
    }
}

const fn removed(id: Id, name: &'static str, advice: &'static str) -> Directive {
    Directive {
        id,
        name,
        aliases: &[],
        context: Context::Anywhere,
        kind: Kind::Ignored,
        default: Fallback::Unset,
        status: Status::Removed(advice),
        field: "",
        to_agent: false,
        example: "on",
        doc: "Removed from Phusion Passenger: Apache refuses to start and says what to use instead.",
    }
}

const fn int(min: i64, max: i64, unit: &'static str) -> Kind {
    Kind::Int { min, max, unit }
}

/// Upper bound for counts stored as `u32`.
const COUNT: i64 = i32::MAX as i64;
/// Upper bound for durations in seconds (about 136 years).
const SECONDS: i64 = u32::MAX as i64;
/// Upper bound for byte and megabyte sizes stored as `u64`.
const SIZE: i64 = i64::MAX;

use Context::{App, Global, Location};
use Fallback::{Computed, Is, Unset};
use Override::{All, Options};

/// The accepted spawn methods: `smart-lv2` and `conservative` are old names.
pub const SPAWN_METHODS: &[(&str, &str)] = &[
    ("smart", "smart"),
    ("direct", "direct"),
    ("smart-lv2", "smart"),
    ("conservative", "direct"),
];

/// The accepted application types, with their aliases.
pub const APP_TYPES: &[(&str, &str)] = &[
    ("rack", "rack"),
    ("wsgi", "wsgi"),
    ("node", "node"),
    ("meteor", "meteor"),
    ("ruby", "rack"),
    ("python", "wsgi"),
    ("nodejs", "node"),
];

/// The accepted concurrency models.
pub const CONCURRENCY_MODELS: &[(&str, &str)] = &[("process", "process"), ("thread", "thread")];

/// Every directive, in [`Id`] order.
#[rustfmt::skip] // one row per directive, laid out by hand
pub const DIRECTIVES: &[Directive] = &[
    // ------------------------------------------------------------ global --
    row(Id::Root, "PassengerRoot", Global, Kind::Path, Computed("the directory of mod_passenger.so, then the installed location"),
        "root", "/usr/lib/mod_passenger",
        "Where to look for `passenger-agent` first. Optional: the module finds its agent beside \
         mod_passenger.so or where `make install` put it; this only overrides that search."),
    row(Id::Ctl, "PassengerCtl", Global, Kind::KeyValue, Unset, "ctl", "hook_detached_process /usr/local/bin/on-detach",
        "Sets one raw agent option, `PassengerCtl name value`; repeatable. The value is typed \
         automatically: an integer, a decimal number, a boolean (`true`/`false`/`on`/`off`/`yes`/`no`), \
         JSON when it starts with `{` or `[` (checked at startup), else text. Used for hook scripts (`hook_*`)."),
    row(Id::DumpConfigManifest, "PassengerDumpConfigManifest", Global, Kind::Path, Unset, "dump_config_manifest",
        "/tmp/passenger-manifest.json",
        "Writes the configuration manifest (a JSON debugging aid) to this file at startup.")
        .status(Status::NoEffect),
    row(Id::DefaultRuby, "PassengerDefaultRuby", Global, Kind::Text, Is("ruby"), "default_ruby", "/usr/bin/ruby3.1",
        "The Ruby interpreter for applications that set no `PassengerRuby`."),
    row(Id::LogLevel, "PassengerLogLevel", Global, int(0, 7, ""), Is("3"), "log_level", "4",
        "How much the agent logs: 0 critical, 1 error, 2 warning, 3 notice, 4 info, 5 debug, \
         6 and 7 more debugging."),
    row(Id::LogFile, "PassengerLogFile", Global, Kind::Path, Computed("Apache's main ErrorLog"), "log_file",
        "/var/log/apache2/passenger.log",
        "The agent's log file.")
        .aka(&["PassengerDebugLogFile"]),
    row(Id::DisableLogPrefix, "PassengerDisableLogPrefix", Global, Kind::Flag, Is("off"), "disable_log_prefix", "on",
        "Drops the process id and channel prefix from the agent's log lines."),
    row(Id::SocketBacklog, "PassengerSocketBacklog", Global, int(0, COUNT, "connections"), Is("2048"), "socket_backlog",
        "1024",
        "The listen() backlog of the agent's request socket."),
    row(Id::FileDescriptorLogFile, "PassengerFileDescriptorLogFile", Global, Kind::Path, Unset,
        "file_descriptor_log_file", "/var/log/apache2/passenger-fds.log",
        "Logs file descriptor opens and closes (a debugging aid).")
        .status(Status::NoEffect),
    row(Id::MaxPoolSize, "PassengerMaxPoolSize", Global, int(1, COUNT, "processes"), Is("6"), "max_pool_size", "6",
        "The most application processes alive at once, over all applications.")
        .aka(&["RailsMaxPoolSize"]),
    row(Id::PoolIdleTime, "PassengerPoolIdleTime", Global, int(0, SECONDS, "seconds"), Is("300"), "pool_idle_time", "600",
        "Shuts down a process that has been idle this long (down to `PassengerMinInstances`); 0 means never.")
        .aka(&["RailsPoolIdleTime"]),
    row(Id::ResponseBufferHighWatermark, "PassengerResponseBufferHighWatermark", Global, int(0, SIZE, "bytes"),
        Is("134217728"), "response_buffer_high_watermark", "67108864",
        "How much of a response the agent buffers (in memory, then on disk) for a slow client \
         before it stops reading from the application; 0 means no limit."),
    row(Id::UserSwitching, "PassengerUserSwitching", Global, Kind::Flag, Is("on"), "user_switching", "on",
        "Runs each application as the owner of its startup file (or `PassengerUser`), when Apache runs as root.")
        .aka(&["RailsUserSwitching"]),
    row(Id::DefaultUser, "PassengerDefaultUser", Global, Kind::Text, Is("nobody"), "default_user", "www-data",
        "The user applications run as when user switching picks no other (the startup file is \
         owned by root, or user switching is off). Must exist: checked at startup.")
        .aka(&["RailsDefaultUser"]),
    row(Id::DefaultGroup, "PassengerDefaultGroup", Global, Kind::Text, Computed("the primary group of PassengerDefaultUser"),
        "default_group", "www-data",
        "The group that goes with `PassengerDefaultUser`. Must exist: checked at startup."),
    row(Id::DataBufferDir, "PassengerDataBufferDir", Global, Kind::Path, Computed("$TMPDIR, else /tmp"),
        "data_buffer_dir", "/var/tmp",
        "Where request and response bodies are buffered when they outgrow memory."),
    row(Id::InstanceRegistryDir, "PassengerInstanceRegistryDir", Global, Kind::Path, Computed("$TMPDIR, else /tmp"),
        "instance_registry_dir", "/run/passenger-instreg",
        "Where the agent creates its instance directory (sockets, status files); \
         `passenger-status` looks here."),
    row(Id::SpawnDir, "PassengerSpawnDir", Global, Kind::Path, Computed("$TMPDIR, else /tmp"), "spawn_dir", "/var/tmp",
        "Where the spawner creates the temporary work directories of starting processes."),
    row(Id::DisableSecurityUpdateCheck, "PassengerDisableSecurityUpdateCheck", Global, Kind::Flag, Is("off"),
        "disable_security_update_check", "on",
        "Accepted for compatibility. mod_passenger never contacts an update server, so this is always in effect."),
    row(Id::SecurityUpdateCheckProxy, "PassengerSecurityUpdateCheckProxy", Global, Kind::Text, Unset,
        "security_update_check_proxy", "http://proxy.example:3128",
        "Accepted for compatibility; mod_passenger makes no update check, so it is never used."),
    row(Id::DisableAnonymousTelemetry, "PassengerDisableAnonymousTelemetry", Global, Kind::Flag, Is("off"),
        "disable_anonymous_telemetry", "on",
        "Accepted for compatibility. mod_passenger sends no telemetry, so this is always in effect."),
    row(Id::AnonymousTelemetryProxy, "PassengerAnonymousTelemetryProxy", Global, Kind::Text, Unset,
        "anonymous_telemetry_proxy", "http://proxy.example:3128",
        "Accepted for compatibility; mod_passenger sends no telemetry, so it is never used."),
    row(Id::StatThrottleRate, "PassengerStatThrottleRate", Global, int(0, SECONDS, "seconds"), Is("10"),
        "stat_throttle_rate", "5",
        "At most one filesystem check per this many seconds (application autodetection, restart.txt); \
         0 checks on every request."),
    row(Id::PreStart, "PassengerPreStart", Global, Kind::List(Item::Url), Unset, "prestart_urls",
        "http://127.0.0.1/",
        "Starts the application behind this URL when Apache starts, instead of on its first request; repeatable."),
    row(Id::Turbocaching, "PassengerTurbocaching", Global, Kind::Flag, Is("on"), "turbocaching", "off",
        "Phusion Passenger's small response cache. mod_passenger has none; `off` is always in effect."),
    row(Id::ShowVersionInHeader, "PassengerShowVersionInHeader", Global, Kind::Flag, Is("on"),
        "show_version_in_header", "off",
        "Includes the version in the `X-Powered-By` and `Server` headers."),
    row(Id::MaxInstancesPerApp, "PassengerMaxInstancesPerApp", Global, int(0, COUNT, "processes"), Is("0"),
        "max_instances_per_app", "4",
        "The most processes of any one application; 0 means only `PassengerMaxPoolSize` limits it.")
        .aka(&["RailsMaxInstancesPerApp"]),
    row(Id::AdminPanelUrl, "PassengerAdminPanelUrl", Global, Kind::Text, Unset, "admin_panel_url",
        "wss://panel.example/connect",
        "Connects the agent to a Passenger admin panel.")
        .status(Status::NoEffect),
    row(Id::AdminPanelAuthType, "PassengerAdminPanelAuthType", Global, Kind::Text, Unset, "admin_panel_auth_type",
        "basic",
        "How to authenticate to the admin panel.")
        .status(Status::NoEffect),
    row(Id::AdminPanelUsername, "PassengerAdminPanelUsername", Global, Kind::Text, Unset, "admin_panel_username",
        "admin",
        "The user name for the admin panel.")
        .status(Status::NoEffect),
    row(Id::AdminPanelPassword, "PassengerAdminPanelPassword", Global, Kind::Text, Unset, "admin_panel_password",
        "secret",
        "The password for the admin panel.")
        .status(Status::NoEffect),
    row(Id::FlyWith, "PassengerFlyWith", Global, Kind::Path, Unset, "fly_with", "/run/flying-passenger.sock",
        "Flying mode: use the agent listening on this socket (started with `flying-passenger`) \
         instead of starting one; it survives Apache restarts. Enterprise-only in Phusion Passenger."),
    // ------------------------------------------------------- application --
    row(Id::AppRoot, "PassengerAppRoot", App, Kind::Path, Computed("the parent of the document root (or of document root + base URI)"),
        "app_root", "/srv/app",
        "The application's root directory. Set it when the document root is not the app's \
         `public` directory; needed for `PassengerAppType` to take effect."),
    row(Id::AppType, "PassengerAppType", App, Kind::Choice(APP_TYPES), Computed("autodetected from the files in the app root"),
        "app_type", "wsgi",
        "Forces the application type instead of autodetecting it: `rack` (alias `ruby`), `wsgi` \
         (`python`), `node` (`nodejs`) or `meteor`. Only honoured together with `PassengerAppRoot`."),
    row(Id::AppStartCommand, "PassengerAppStartCommand", App, Kind::Text, Unset, "app_start_command",
        "./server --port=$PORT",
        "Runs an application of any language with this shell command, which must listen on `$PORT`; \
         no autodetection."),
    row(Id::StartupFile, "PassengerStartupFile", App, Kind::Text, Computed("config.ru, passenger_wsgi.py, app.js or .meteor, by type"),
        "startup_file", "app.py",
        "The application's entry file, relative to the app root. Its owner is the user the app runs as \
         (see `PassengerUserSwitching`)."),
    row(Id::AppEnv, "PassengerAppEnv", App, Kind::Text, Is("production"), "app_env", "staging",
        "The environment: sets RAILS_ENV, RACK_ENV, WSGI_ENV, NODE_ENV and PASSENGER_APP_ENV.")
        .aka(&["RailsEnv", "RackEnv"]),
    row(Id::AppGroupName, "PassengerAppGroupName", App, Kind::Text, Computed("\"<app root> (<environment>)\""),
        "app_group_name", "shop",
        "The name that identifies the application in the pool: locations with the same group name share processes."),
    row(Id::BaseURI, "PassengerBaseURI", App, Kind::List(Item::BaseUri), Unset, "base_uris", "/shop",
        "Serves an application under this sub-URI; repeatable. Must start with `/` and not end with `/`; \
         `/` itself is accepted and ignored. The longest matching one wins.")
        .aka(&["RailsBaseURI", "RackBaseURI"])
        .module_only(),
    row(Id::Ruby, "PassengerRuby", App, Kind::Text, Computed("PassengerDefaultRuby"), "ruby", "/usr/bin/ruby",
        "The Ruby interpreter for this application.")
        .aka(&["RailsRuby"]),
    row(Id::Python, "PassengerPython", App, Kind::Text, Computed("python3, then python"), "python", "/usr/bin/python3",
        "The Python interpreter for this application."),
    row(Id::Nodejs, "PassengerNodejs", App, Kind::Text, Is("node"), "nodejs", "/usr/bin/node",
        "The Node.js interpreter for this application."),
    row(Id::MeteorAppSettings, "PassengerMeteorAppSettings", App, Kind::Path, Unset, "meteor_app_settings",
        "/srv/app/settings.json",
        "The settings JSON file of a non-bundled Meteor application."),
    row(Id::MinInstances, "PassengerMinInstances", App, int(0, COUNT, "processes"), Is("1"), "min_instances", "2",
        "Idle processes are not shut down below this many; at startup (see `PassengerPreStart`) this many are started."),
    row(Id::MaxRequests, "PassengerMaxRequests", App, int(0, SIZE, "requests"), Is("0"), "max_requests", "1000",
        "Restarts a process after it has served this many requests; 0 means never."),
    row(Id::StartTimeout, "PassengerStartTimeout", App, int(1, SECONDS, "seconds"), Is("90"), "start_timeout", "120",
        "How long a process may take to start before it is killed and the start reported as failed."),
    row(Id::MaxRequestQueueSize, "PassengerMaxRequestQueueSize", App, int(0, COUNT, "requests"), Is("100"),
        "max_request_queue_size", "200",
        "How many requests may wait for a process of the application; more get 503. 0 means no limit."),
    row(Id::MaxPreloaderIdleTime, "PassengerMaxPreloaderIdleTime", App, int(0, SECONDS, "seconds"), Is("300"),
        "max_preloader_idle_time", "0",
        "Stops an idle preloader (smart spawning) after this long; 0 means never.")
        .aka(&["RailsAppSpawnerIdleTime"]),
    row(Id::SpawnMethod, "PassengerSpawnMethod", App, Kind::Choice(SPAWN_METHODS), Computed("smart for Ruby apps, direct otherwise"),
        "spawn_method", "direct",
        "`smart` loads the application once in a preloader and forks processes from it; `direct` \
         starts each process from scratch. `smart-lv2` and `conservative` are old names for them.")
        .aka(&["RailsSpawnMethod"]),
    row(Id::LoadShellEnvvars, "PassengerLoadShellEnvvars", App, Kind::Flag, Is("on"), "load_shell_envvars", "off",
        "Starts the application through the user's login shell, so its profile's environment variables apply."),
    row(Id::PreloadBundler, "PassengerPreloadBundler", App, Kind::Flag, Is("off"), "preload_bundler", "on",
        "Loads Bundler before the Ruby application (`-r bundler/setup`)."),
    row(Id::User, "PassengerUser", App, Kind::Text, Computed("see PassengerUserSwitching"), "user", "deploy",
        "Runs the application as this user (when Apache runs as root and user switching is on)."),
    row(Id::Group, "PassengerGroup", App, Kind::Text, Computed("the primary group of the application's user"),
        "group", "deploy",
        "Runs the application with this group; `!STARTUP_FILE!` means the group that owns the startup file."),
    row(Id::RestartDir, "PassengerRestartDir", App, Kind::Text, Computed("tmp, in the app root"), "restart_dir", "tmp/control",
        "Where `restart.txt` and `always_restart.txt` are looked for; relative to the app root."),
    row(Id::FriendlyErrorPages, "PassengerFriendlyErrorPages", App, Kind::Flag, Computed("on when the environment is development, else off"),
        "friendly_error_pages", "on",
        "Shows a detailed error page (with the application's output) when it fails to start."),
    row(Id::CustomErrorPage, "PassengerCustomErrorPage", App, Kind::Path, Unset, "custom_error_page",
        "/srv/app/public/503.html",
        "A static HTML page served instead of the error page when the application fails to start."),
    row(Id::DirectInstanceRequestAddress, "PassengerDirectInstanceRequestAddress", App, Kind::Text, Is("127.0.0.1"),
        "direct_instance_request_address", "127.0.0.1",
        "The address each process's debugging HTTP socket listens on."),
    row(Id::ForceMaxConcurrentRequestsPerProcess, "PassengerForceMaxConcurrentRequestsPerProcess", App,
        int(-1, COUNT, "requests"), Is("-1"), "force_max_concurrent_requests_per_process", "1",
        "Overrides how many requests a process says it handles at once: -1 trusts the process, 0 means no limit."),
    row(Id::LveMinUid, "PassengerLveMinUid", App, int(0, u32::MAX as i64, ""), Is("500"), "lve_min_uid", "1000",
        "CloudLinux LVE: applications of users below this uid are not put in an LVE."),
    row(Id::MonitorLogFile, "PassengerMonitorLogFile", App, Kind::List(Item::Text), Unset, "monitor_log_files",
        "/srv/app/log/production.log",
        "Accepted for compatibility; repeatable. Phusion Passenger stores it and does nothing with it either.")
        .module_only(),
    row(Id::MemoryLimit, "PassengerMemoryLimit", App, int(0, SIZE, "MB"), Is("0"), "memory_limit", "512",
        "Restarts a process (after its current request) whose memory use exceeds this many megabytes; 0 means no \
         limit. Enterprise-only in Phusion Passenger."),
    row(Id::MaxInstances, "PassengerMaxInstances", App, int(0, COUNT, "processes"), Is("0"), "max_instances", "4",
        "The most processes of this application; 0 means no limit of its own. Enterprise-only \
         in Phusion Passenger."),
    row(Id::RollingRestarts, "PassengerRollingRestarts", App, Kind::Flag, Is("off"), "rolling_restarts", "on",
        "Restarts processes one at a time, so the application keeps serving during a restart.")
        .status(Status::Enterprise),
    row(Id::ResistDeploymentErrors, "PassengerResistDeploymentErrors", App, Kind::Flag, Is("off"),
        "resist_deployment_errors", "on",
        "Keeps the old processes when the new version of the application fails to start.")
        .status(Status::Enterprise),
    row(Id::Debugger, "PassengerDebugger", App, Kind::Flag, Is("off"), "debugger", "on",
        "Starts Ruby applications under the debugger.")
        .status(Status::Enterprise),
    row(Id::ConcurrencyModel, "PassengerConcurrencyModel", App, Kind::Choice(CONCURRENCY_MODELS), Is("process"),
        "concurrency_model", "thread",
        "`process`: one request at a time per process; `thread`: `PassengerThreadCount` threads per process.")
        .status(Status::Enterprise),
    row(Id::ThreadCount, "PassengerThreadCount", App, int(1, COUNT, "threads"), Is("1"), "thread_count", "8",
        "Threads per process when `PassengerConcurrencyModel` is `thread`.")
        .status(Status::Enterprise),
    row(Id::AppLogFile, "PassengerAppLogFile", App, Kind::Path, Computed("PassengerLogFile"), "app_log_file",
        "/var/log/apache2/app.log",
        "Where this application's output is logged.")
        .status(Status::Enterprise),
    // ---------------------------------------------------------- location --
    row(Id::Enabled, "PassengerEnabled", Location(All), Kind::Flag, Is("on"), "enabled", "off",
        "Whether mod_passenger looks at requests for this location at all (it still needs to find an app).")
        .module_only(),
    row(Id::HighPerformance, "PassengerHighPerformance", Location(All), Kind::Flag, Is("off"), "high_performance", "on",
        "Takes requests before most other modules see them: faster, but mod_rewrite and the like \
         no longer apply to the application's URLs.")
        .module_only(),
    row(Id::ErrorOverride, "PassengerErrorOverride", Location(All), Kind::Flag, Is("off"), "error_override", "on",
        "For responses with status 400 and above, lets Apache's `ErrorDocument` replace the application's body.")
        .module_only(),
    row(Id::BufferUpload, "PassengerBufferUpload", Location(All), Kind::Flag, Is("on"), "buffer_upload", "off",
        "Receives the whole request body before passing the request to the application, which \
         protects it from slow clients. Turn off for upload progress or streaming uploads."),
    row(Id::BufferResponse, "PassengerBufferResponse", Location(All), Kind::Flag, Is("off"), "buffer_response", "on",
        "Lets Apache buffer the whole response in memory before sending it (breaks streaming).")
        .module_only(),
    row(Id::StickySessions, "PassengerStickySessions", Location(All), Kind::Flag, Is("off"), "sticky_sessions", "on",
        "Routes a client back to the process that served it before, by a cookie."),
    row(Id::StickySessionsCookieName, "PassengerStickySessionsCookieName", Location(All), Kind::Text,
        Is("_passenger_route"), "sticky_sessions_cookie_name", "_route",
        "The name of the sticky-session cookie."),
    row(Id::StickySessionsCookieAttributes, "PassengerStickySessionsCookieAttributes", Location(All), Kind::Text,
        Is("SameSite=Lax; Secure;"), "sticky_sessions_cookie_attributes", "SameSite=Strict; Secure;",
        "Attributes appended to the sticky-session cookie."),
    row(Id::AllowEncodedSlashes, "PassengerAllowEncodedSlashes", Location(Options), Kind::Flag, Is("off"),
        "allow_encoded_slashes", "on",
        "Passes the URI as the client sent it, so `%2F` stays encoded (needs Apache's `AllowEncodedSlashes` \
         too); mod_rewrite rules no longer apply to the application's URLs.")
        .module_only(),
    row(Id::MaxRequestTime, "PassengerMaxRequestTime", Location(All), int(0, SECONDS, "seconds"), Is("0"),
        "max_request_time", "60",
        "Kills a process whose request takes longer than this (SIGTERM, then SIGKILL after 2 s) and answers \
         504; 0 means no limit. Enterprise-only in Phusion Passenger."),
    row(Id::MaxRequestQueueTime, "PassengerMaxRequestQueueTime", Location(All), int(0, SECONDS, "seconds"), Is("0"),
        "max_request_queue_time", "10",
        "Answers 504 to a request that waited longer than this for a process; 0 means no limit. \
         Enterprise-only in Phusion Passenger."),
    // ---------------------------------------------------------- obsolete --
    obsolete(Id::RailsSpawnServer, "RailsSpawnServer"),
    obsolete(Id::RailsAllowModRewrite, "RailsAllowModRewrite"),
    obsolete(Id::RailsFrameworkSpawnerIdleTime, "RailsFrameworkSpawnerIdleTime"),
    obsolete(Id::UseGlobalQueue, "PassengerUseGlobalQueue"),
    obsolete(Id::UnionStationGatewayAddress, "UnionStationGatewayAddress"),
    obsolete(Id::UnionStationGatewayPort, "UnionStationGatewayPort"),
    obsolete(Id::UnionStationGatewayCert, "UnionStationGatewayCert"),
    obsolete(Id::UnionStationProxyAddress, "UnionStationProxyAddress"),
    obsolete(Id::UnionStationKey, "UnionStationKey"),
    obsolete(Id::UnionStationFilter, "UnionStationFilter"),
    obsolete(Id::UnionStationSupport, "UnionStationSupport"),
    obsolete(Id::AnalyticsLogUser, "PassengerAnalyticsLogUser"),
    obsolete(Id::AnalyticsLogGroup, "PassengerAnalyticsLogGroup"),
    // ----------------------------------------------------------- removed --
    removed(Id::ResolveSymlinksInDocumentRoot, "PassengerResolveSymlinksInDocumentRoot",
        "set PassengerAppRoot to the application's real directory instead"),
    removed(Id::RailsAutoDetect, "RailsAutoDetect",
        "applications are always autodetected; use PassengerEnabled off to keep mod_passenger out of a location"),
    removed(Id::RackAutoDetect, "RackAutoDetect",
        "applications are always autodetected; use PassengerEnabled off to keep mod_passenger out of a location"),
    removed(Id::WsgiAutoDetect, "WsgiAutoDetect",
        "applications are always autodetected; use PassengerEnabled off to keep mod_passenger out of a location"),
];

/// Checked at compile time: each row sits at the index of its [`Id`].
const _: () = {
    let mut i = 0;
    while i < DIRECTIVES.len() {
        assert!(
            DIRECTIVES[i].id as usize == i,
            "DIRECTIVES rows must be in Id order"
        );
        i += 1;
    }
    assert!(
        DIRECTIVES.len() == Id::WsgiAutoDetect as usize + 1,
        "every Id has a row"
    );
};

//! [`AppOptions`]: one application's options as the agent sees them.
//!
//! The module sends [`super::DirConfig::option_pairs`] (plus the app root,
//! type, startup file and base URI it resolved) with each request, as byte
//! pairs. The agent decodes them here: names are looked up in the table,
//! values are checked with the same rules Apache applied, and the table's
//! defaults fill in what is unset. Some defaults depend on other options
//! (startup file on the type, group name on root and environment, spawn
//! method on the type, friendly error pages on the environment).

use std::path::PathBuf;
use std::time::Duration;

use super::dir::DirConfig;
use super::table::{self, Fallback, Id};
use super::value::{self, Value};
use super::{AppType, ConcurrencyModel, Error, SpawnMethod};

/// The per-application options, decoded, validated and with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppOptions {
    /// `PassengerAppRoot` (the module always sends the one it resolved).
    pub app_root: String,
    /// `PassengerAppType`, resolved; [`AppType::Generic`] with a start command.
    pub app_type: AppType,
    /// `PassengerAppStartCommand`: a generic app's shell command.
    pub app_start_command: Option<String>,
    /// `PassengerStartupFile`, relative to the app root; default from the type.
    pub startup_file: String,
    /// `PassengerAppEnv` (default `production`).
    pub app_env: String,
    /// `PassengerAppGroupName`; default `"<app_root> (<app_env>)"`: the pool key.
    pub app_group_name: String,
    /// The `PassengerBaseURI` the request matched (becomes `SCRIPT_NAME`).
    pub base_uri: Option<String>,
    /// `PassengerRuby`; default `PassengerDefaultRuby`.
    pub ruby: String,
    /// `PassengerPython`; `None` = try `python3`, then `python`.
    pub python: Option<String>,
    /// `PassengerNodejs` (default `node`).
    pub nodejs: String,
    /// `PassengerMeteorAppSettings`.
    pub meteor_app_settings: Option<String>,
    /// `PassengerMinInstances` (default 1).
    pub min_instances: u32,
    /// `PassengerMaxRequests` (default 0 = no limit).
    pub max_requests: u64,
    /// `PassengerStartTimeout` (default 90 s).
    pub start_timeout: Duration,
    /// `PassengerMaxRequestQueueSize` (default 100; 0 = no limit).
    pub max_request_queue_size: u32,
    /// `PassengerMaxPreloaderIdleTime` (default 300 s; zero = never).
    pub max_preloader_idle_time: Duration,
    /// `PassengerSpawnMethod`; default smart for Rack, direct otherwise.
    pub spawn_method: SpawnMethod,
    /// `PassengerLoadShellEnvvars` (default on).
    pub load_shell_envvars: bool,
    /// `PassengerPreloadBundler` (default off).
    pub preload_bundler: bool,
    /// `PassengerUser`.
    pub user: Option<String>,
    /// `PassengerGroup` (`!STARTUP_FILE!` = the startup file's group).
    pub group: Option<String>,
    /// `PassengerRestartDir`; `None` = `tmp` (see [`AppOptions::restart_dir_path`]).
    pub restart_dir: Option<String>,
    /// `PassengerFriendlyErrorPages`; default on iff the env is `development`.
    pub friendly_error_pages: bool,
    /// `PassengerCustomErrorPage`.
    pub custom_error_page: Option<String>,
    /// `PassengerDirectInstanceRequestAddress` (default `127.0.0.1`).
    pub direct_instance_request_address: String,
    /// `PassengerForceMaxConcurrentRequestsPerProcess` (-1 = trust the app; 0 = unlimited).
    pub force_max_concurrent_requests_per_process: i64,
    /// `PassengerLveMinUid` (default 500).
    pub lve_min_uid: u32,
    /// `PassengerBufferUpload` (default on).
    pub buffer_upload: bool,
    /// `PassengerStickySessions` (default off).
    pub sticky_sessions: bool,
    /// `PassengerStickySessionsCookieName` (default `_passenger_route`).
    pub sticky_sessions_cookie_name: String,
    /// `PassengerStickySessionsCookieAttributes` (default `SameSite=Lax; Secure;`).
    pub sticky_sessions_cookie_attributes: String,
    /// `PassengerMemoryLimit` in MB (0 = none; not active yet).
    pub memory_limit: u64,
    /// `PassengerMaxInstances` (0 = none; not active yet).
    pub max_instances: u32,
    /// `PassengerRollingRestarts` (not active yet).
    pub rolling_restarts: bool,
    /// `PassengerResistDeploymentErrors` (not active yet).
    pub resist_deployment_errors: bool,
    /// `PassengerDebugger` (not active yet).
    pub debugger: bool,
    /// `PassengerConcurrencyModel` (default process; not active yet).
    pub concurrency_model: ConcurrencyModel,
    /// `PassengerThreadCount` (default 1; not active yet).
    pub thread_count: u32,
    /// `PassengerMaxRequestTime` in seconds (0 = none; not active yet).
    pub max_request_time: u64,
    /// `PassengerMaxRequestQueueTime` in seconds (0 = none; not active yet).
    pub max_request_queue_time: u64,
    /// `PassengerAppLogFile` (not active yet).
    pub app_log_file: Option<String>,
}

impl AppOptions {
    /// Decodes the pairs a request carries. Names are canonical directive
    /// names or aliases; a later pair replaces an earlier one. Unknown and
    /// global names are skipped (a newer module may talk to an older agent);
    /// bad values, text that is not UTF-8, and a missing app root or type
    /// are errors. `PassengerRuby` defaults to `ruby`; see
    /// [`AppOptions::from_pairs_with`] for `PassengerDefaultRuby`.
    pub fn from_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<AppOptions, Error> {
        let default_ruby = match table::directive(Id::DefaultRuby).default {
            Fallback::Is(ruby) => ruby,
            _ => "ruby",
        };
        AppOptions::from_pairs_with(pairs, default_ruby)
    }

    /// As [`AppOptions::from_pairs`], with the server's `PassengerDefaultRuby`.
    pub fn from_pairs_with(
        pairs: &[(Vec<u8>, Vec<u8>)],
        default_ruby: &str,
    ) -> Result<AppOptions, Error> {
        let mut set = DirConfig::new();
        let mut base_uri = None;
        for (name, text) in pairs {
            let name = std::str::from_utf8(name).map_err(|_| {
                Error::new(
                    "PassengerAppRoot",
                    "an option name is not valid UTF-8".to_owned(),
                )
            })?;
            let Some(d) = value::lookup(name).filter(|d| !d.is_global() && d.stores()) else {
                log::debug!(target: "MP1010", "ignoring unknown application option {name}");
                continue;
            };
            let text = std::str::from_utf8(text).map_err(|_| {
                Error::new(d.name, format!("{}: the value is not valid UTF-8", d.name))
            })?;
            let parsed = if d.id == Id::AppType && text.eq_ignore_ascii_case("generic") {
                Value::Choice("generic")
            } else {
                value::parse_value(d, d.name, text)?
            };
            match (d.id, parsed) {
                (Id::BaseURI, Value::List(mut uri)) => base_uri = uri.pop().filter(|u| u != "/"),
                (id, Value::List(items)) => set.add(id, Value::List(items)),
                (id, parsed) => {
                    // A later pair replaces an earlier one: drop lists' accumulation rule.
                    set.add(id, parsed);
                }
            }
        }
        build(&set, base_uri, default_ruby)
    }

    /// Where `restart.txt` lives: `PassengerRestartDir` (default `tmp`),
    /// relative to the app root unless absolute.
    pub fn restart_dir_path(&self) -> PathBuf {
        PathBuf::from(&self.app_root).join(self.restart_dir.as_deref().unwrap_or("tmp"))
    }
}

fn build(
    set: &DirConfig,
    base_uri: Option<String>,
    default_ruby: &str,
) -> Result<AppOptions, Error> {
    let text = |id: Id| -> Option<String> {
        match set.get(id) {
            Some(Value::Text(t)) => Some(t.clone()),
            Some(Value::Choice(c)) => Some((*c).to_owned()),
            _ => None,
        }
    };
    let text_or_default = |id: Id| -> String {
        text(id).unwrap_or_else(|| match table::directive(id).default {
            Fallback::Is(t) => t.to_owned(),
            _ => String::new(),
        })
    };
    let int = |id: Id| -> i64 {
        match set.get(id).cloned().or_else(|| value::default_value(id)) {
            Some(Value::Int(n)) => n,
            _ => 0,
        }
    };
    let flag = |id: Id| -> Option<bool> {
        match set.get(id) {
            Some(Value::Flag(b)) => Some(*b),
            _ => None,
        }
    };
    let flag_or_default =
        |id: Id| flag(id).unwrap_or(table::directive(id).default == Fallback::Is("on"));
    // Bounds were checked against the table, which fits every field.
    let count = |id: Id| u32::try_from(int(id)).unwrap_or(u32::MAX);
    let big = |id: Id| u64::try_from(int(id)).unwrap_or(0);
    let secs = |id: Id| Duration::from_secs(big(id));

    let app_root = text(Id::AppRoot).ok_or_else(|| {
        Error::new(
            "PassengerAppRoot",
            "PassengerAppRoot: the request carries no application root".to_owned(),
        )
    })?;
    let app_start_command = text(Id::AppStartCommand);
    let app_type = match (text(Id::AppType), &app_start_command) {
        (Some(t), _) => AppType::parse(&t).ok_or_else(|| {
            Error::new(
                "PassengerAppType",
                format!("PassengerAppType: unknown type \"{t}\""),
            )
        })?,
        (None, Some(_)) => AppType::Generic,
        (None, None) => {
            return Err(Error::new(
                "PassengerAppType",
                "PassengerAppType: the request carries neither an application type nor a start command".to_owned(),
            ));
        }
    };
    let app_env = text_or_default(Id::AppEnv);
    let app_group_name =
        text(Id::AppGroupName).unwrap_or_else(|| format!("{app_root} ({app_env})"));
    let spawn_method = match text(Id::SpawnMethod) {
        Some(m) => SpawnMethod::parse(&m).unwrap_or(SpawnMethod::Direct),
        None if app_type == AppType::Rack => SpawnMethod::Smart,
        None => SpawnMethod::Direct,
    };
    Ok(AppOptions {
        startup_file: text(Id::StartupFile)
            .unwrap_or_else(|| app_type.default_startup_file().to_owned()),
        friendly_error_pages: flag(Id::FriendlyErrorPages).unwrap_or(app_env == "development"),
        ruby: text(Id::Ruby).unwrap_or_else(|| default_ruby.to_owned()),
        python: text(Id::Python),
        nodejs: text_or_default(Id::Nodejs),
        meteor_app_settings: text(Id::MeteorAppSettings),
        min_instances: count(Id::MinInstances),
        max_requests: big(Id::MaxRequests),
        start_timeout: secs(Id::StartTimeout),
        max_request_queue_size: count(Id::MaxRequestQueueSize),
        max_preloader_idle_time: secs(Id::MaxPreloaderIdleTime),
        spawn_method,
        load_shell_envvars: flag_or_default(Id::LoadShellEnvvars),
        preload_bundler: flag_or_default(Id::PreloadBundler),
        user: text(Id::User),
        group: text(Id::Group),
        restart_dir: text(Id::RestartDir),
        custom_error_page: text(Id::CustomErrorPage),
        direct_instance_request_address: text_or_default(Id::DirectInstanceRequestAddress),
        force_max_concurrent_requests_per_process: int(Id::ForceMaxConcurrentRequestsPerProcess),
        lve_min_uid: count(Id::LveMinUid),
        buffer_upload: flag_or_default(Id::BufferUpload),
        sticky_sessions: flag_or_default(Id::StickySessions),
        sticky_sessions_cookie_name: text_or_default(Id::StickySessionsCookieName),
        sticky_sessions_cookie_attributes: text_or_default(Id::StickySessionsCookieAttributes),
        memory_limit: big(Id::MemoryLimit),
        max_instances: count(Id::MaxInstances),
        rolling_restarts: flag_or_default(Id::RollingRestarts),
        resist_deployment_errors: flag_or_default(Id::ResistDeploymentErrors),
        debugger: flag_or_default(Id::Debugger),
        concurrency_model: match text_or_default(Id::ConcurrencyModel).as_str() {
            "thread" => ConcurrencyModel::Thread,
            _ => ConcurrencyModel::Process,
        },
        thread_count: count(Id::ThreadCount),
        max_request_time: big(Id::MaxRequestTime),
        max_request_queue_time: big(Id::MaxRequestQueueTime),
        app_log_file: text(Id::AppLogFile),
        app_root,
        app_type,
        app_start_command,
        app_env,
        app_group_name,
        base_uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_table_and_the_other_options() {
        let o = AppOptions::from_pairs(&pairs(&[
            ("PassengerAppRoot", "/srv/a"),
            ("PassengerAppType", "rack"),
        ]))
        .unwrap();
        assert_eq!(o.app_type, AppType::Rack);
        assert_eq!(o.startup_file, "config.ru");
        assert_eq!(o.app_env, "production");
        assert_eq!(o.app_group_name, "/srv/a (production)");
        assert_eq!(o.spawn_method, SpawnMethod::Smart);
        assert_eq!(o.python, None);
        assert_eq!(o.ruby, "ruby");
        assert_eq!(o.nodejs, "node");
        assert_eq!(o.min_instances, 1);
        assert_eq!(o.max_requests, 0);
        assert_eq!(o.start_timeout, Duration::from_secs(90));
        assert_eq!(o.max_request_queue_size, 100);
        assert_eq!(o.max_preloader_idle_time, Duration::from_secs(300));
        assert!(!o.friendly_error_pages);
        assert!(o.load_shell_envvars && o.buffer_upload && !o.sticky_sessions);
        assert_eq!(o.force_max_concurrent_requests_per_process, -1);
        assert_eq!(o.lve_min_uid, 500);
        assert_eq!(o.direct_instance_request_address, "127.0.0.1");
        assert_eq!(o.sticky_sessions_cookie_name, "_passenger_route");
        assert_eq!(o.sticky_sessions_cookie_attributes, "SameSite=Lax; Secure;");
        assert_eq!(o.concurrency_model, ConcurrencyModel::Process);
        assert_eq!(o.thread_count, 1);
        assert_eq!(
            (
                o.memory_limit,
                o.max_instances,
                o.max_request_time,
                o.max_request_queue_time
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(o.restart_dir_path(), PathBuf::from("/srv/a/tmp"));
    }

    #[test]
    fn option_pairs_round_trip_into_app_options() {
        let dir = DirConfig::from_directives(&[
            ("RailsEnv", "development"),
            ("PassengerMinInstances", "3"),
            ("PassengerSpawnMethod", "smart-lv2"),
            ("PassengerPython", "/opt/py/bin/python"),
            ("PassengerMaxRequestTime", "20"),
            ("PassengerMemoryLimit", "256"),
            ("PassengerMaxInstances", "4"),
            ("PassengerMaxRequestQueueTime", "5"),
            ("PassengerStartTimeout", "30"),
            ("PassengerConcurrencyModel", "thread"),
        ])
        .unwrap();
        let mut sent: Vec<(Vec<u8>, Vec<u8>)> = dir
            .option_pairs()
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        sent.extend(pairs(&[
            ("PassengerAppRoot", "/srv/p"),
            ("PassengerAppType", "wsgi"),
            ("PassengerBaseURI", "/sub"),
        ]));
        let o = AppOptions::from_pairs(&sent).unwrap();
        assert_eq!(o.app_env, "development");
        assert!(o.friendly_error_pages);
        assert_eq!(o.min_instances, 3);
        assert_eq!(o.spawn_method, SpawnMethod::Smart);
        assert_eq!(o.python.as_deref(), Some("/opt/py/bin/python"));
        assert_eq!(o.startup_file, "passenger_wsgi.py");
        assert_eq!(o.base_uri.as_deref(), Some("/sub"));
        assert_eq!(o.app_group_name, "/srv/p (development)");
        assert_eq!(
            (
                o.max_request_time,
                o.memory_limit,
                o.max_instances,
                o.max_request_queue_time
            ),
            (20, 256, 4, 5)
        );
        assert_eq!(o.start_timeout, Duration::from_secs(30));
        assert_eq!(o.concurrency_model, ConcurrencyModel::Thread);
    }

    #[test]
    fn later_pairs_win_and_unknown_names_are_skipped() {
        let o = AppOptions::from_pairs(&pairs(&[
            ("PassengerAppRoot", "/a"),
            ("PassengerAppRoot", "/b"),
            ("PassengerAppType", "generic"),
            ("PassengerAppStartCommand", "./run $PORT"),
            ("PassengerFutureOption", "x"),
            ("PassengerMaxPoolSize", "3"),
        ]))
        .unwrap();
        assert_eq!(o.app_root, "/b");
        assert_eq!(o.app_type, AppType::Generic);
        assert_eq!(o.startup_file, "");
        assert_eq!(o.spawn_method, SpawnMethod::Direct);
    }

    #[test]
    fn bad_or_missing_values_are_errors_naming_the_directive() {
        let e = AppOptions::from_pairs(&pairs(&[
            ("PassengerAppRoot", "/a"),
            ("PassengerAppType", "rack"),
            ("PassengerMinInstances", "-1"),
        ]))
        .unwrap_err();
        assert_eq!(e.directive(), "PassengerMinInstances");
        assert_eq!(
            AppOptions::from_pairs(&pairs(&[("PassengerAppType", "rack")]))
                .unwrap_err()
                .directive(),
            "PassengerAppRoot"
        );
        assert_eq!(
            AppOptions::from_pairs(&pairs(&[("PassengerAppRoot", "/a")]))
                .unwrap_err()
                .directive(),
            "PassengerAppType"
        );
        let bad_utf8 = vec![(b"PassengerAppRoot".to_vec(), vec![0xff])];
        assert_eq!(
            AppOptions::from_pairs(&bad_utf8).unwrap_err().directive(),
            "PassengerAppRoot"
        );
        let o = AppOptions::from_pairs_with(
            &pairs(&[("PassengerAppRoot", "/a"), ("PassengerAppType", "rack")]),
            "/usr/bin/ruby3",
        )
        .unwrap();
        assert_eq!(o.ruby, "/usr/bin/ruby3");
    }
}

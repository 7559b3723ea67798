//! [`ServerConfig`]: the server-wide (global) directives, typed.
//!
//! Built once per configuration load from the C struct
//! (`src/ffi/config.rs`), checked at `post_config` ([`ServerConfig::check`]),
//! and handed to the agent as JSON ([`ServerConfig::to_json`],
//! [`ServerConfig::from_json`]). The JSON keys are the table's field names.
//! Defaults come from the table.

use serde_json::{Map, Value as Json};

use super::Error;
use super::table::{self, DIRECTIVES, Id, Kind};
use super::value::{self, Value};

/// Server-wide (global) config: every directive of reference §1.2.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// `PassengerRoot`: where to look for the agent first (optional).
    pub root: Option<String>,
    /// `PassengerCtl`: raw agent options, values typed, in order.
    pub ctl: Vec<(String, Json)>,
    /// `PassengerDumpConfigManifest` (no effect yet).
    pub dump_config_manifest: Option<String>,
    /// `PassengerDefaultRuby` (default `ruby`).
    pub default_ruby: String,
    /// `PassengerLogLevel`, 0–7 (default 3).
    pub log_level: u32,
    /// `PassengerLogFile`; `None` = Apache's error log.
    pub log_file: Option<String>,
    /// `PassengerDisableLogPrefix`.
    pub disable_log_prefix: bool,
    /// `PassengerSocketBacklog` (default 2048).
    pub socket_backlog: u32,
    /// `PassengerFileDescriptorLogFile` (no effect yet).
    pub file_descriptor_log_file: Option<String>,
    /// `PassengerMaxPoolSize` (default 6).
    pub max_pool_size: u32,
    /// `PassengerPoolIdleTime` in seconds (default 300; 0 = never).
    pub pool_idle_time: u64,
    /// `PassengerResponseBufferHighWatermark` in bytes (0 = no limit).
    pub response_buffer_high_watermark: u64,
    /// `PassengerUserSwitching` (default on).
    pub user_switching: bool,
    /// `PassengerDefaultUser` (default `nobody`).
    pub default_user: String,
    /// `PassengerDefaultGroup`; `None` = the default user's primary group.
    pub default_group: Option<String>,
    /// `PassengerDataBufferDir`; `None` = `$TMPDIR` or `/tmp`.
    pub data_buffer_dir: Option<String>,
    /// `PassengerInstanceRegistryDir`; `None` = `$TMPDIR` or `/tmp`.
    pub instance_registry_dir: Option<String>,
    /// `PassengerSpawnDir`; `None` = `$TMPDIR` or `/tmp`.
    pub spawn_dir: Option<String>,
    /// `PassengerDisableSecurityUpdateCheck` (always in effect).
    pub disable_security_update_check: bool,
    /// `PassengerSecurityUpdateCheckProxy` (unused).
    pub security_update_check_proxy: Option<String>,
    /// `PassengerDisableAnonymousTelemetry` (always in effect).
    pub disable_anonymous_telemetry: bool,
    /// `PassengerAnonymousTelemetryProxy` (unused).
    pub anonymous_telemetry_proxy: Option<String>,
    /// `PassengerStatThrottleRate` in seconds (default 10).
    pub stat_throttle_rate: u64,
    /// `PassengerPreStart`: URLs to start apps for at startup.
    pub prestart_urls: Vec<String>,
    /// `PassengerTurbocaching` (default on; there is no cache).
    pub turbocaching: bool,
    /// `PassengerShowVersionInHeader` (default on).
    pub show_version_in_header: bool,
    /// `PassengerMaxInstancesPerApp` (0 = no per-app limit).
    pub max_instances_per_app: u32,
    /// `PassengerAdminPanelUrl` (no effect).
    pub admin_panel_url: Option<String>,
    /// `PassengerAdminPanelAuthType` (no effect).
    pub admin_panel_auth_type: Option<String>,
    /// `PassengerAdminPanelUsername` (no effect).
    pub admin_panel_username: Option<String>,
    /// `PassengerAdminPanelPassword` (no effect).
    pub admin_panel_password: Option<String>,
    /// `PassengerFlyWith`: the socket of an agent started by hand.
    pub fly_with: Option<String>,
}

impl Default for ServerConfig {
    /// Every directive at the table's default.
    fn default() -> ServerConfig {
        let mut config = ServerConfig {
            root: None,
            ctl: Vec::new(),
            dump_config_manifest: None,
            default_ruby: String::new(),
            log_level: 0,
            log_file: None,
            disable_log_prefix: false,
            socket_backlog: 0,
            file_descriptor_log_file: None,
            max_pool_size: 0,
            pool_idle_time: 0,
            response_buffer_high_watermark: 0,
            user_switching: false,
            default_user: String::new(),
            default_group: None,
            data_buffer_dir: None,
            instance_registry_dir: None,
            spawn_dir: None,
            disable_security_update_check: false,
            security_update_check_proxy: None,
            disable_anonymous_telemetry: false,
            anonymous_telemetry_proxy: None,
            stat_throttle_rate: 0,
            prestart_urls: Vec::new(),
            turbocaching: false,
            show_version_in_header: false,
            max_instances_per_app: 0,
            admin_panel_url: None,
            admin_panel_auth_type: None,
            admin_panel_username: None,
            admin_panel_password: None,
            fly_with: None,
        };
        for d in DIRECTIVES.iter().filter(|d| d.is_global()) {
            if let Some(v) = value::default_value(d.id) {
                config
                    .apply(d.id, v)
                    .expect("the table's defaults are valid");
            }
        }
        config
    }
}

/// A value that must have been checked already: the table's bounds fit the field.
fn narrow<T: TryFrom<i64>>(id: Id, n: i64) -> Result<T, Error> {
    let name = table::directive(id).name;
    T::try_from(n).map_err(|_| Error::new(name, format!("{name}: {n} is out of range")))
}

impl ServerConfig {
    /// Sets a global directive from a checked value. Repeatable directives
    /// add to what is there. Errors on a directive that is not global or a
    /// value of the wrong type.
    pub fn apply(&mut self, id: Id, value: Value) -> Result<(), Error> {
        let name = table::directive(id).name;
        let wrong = || {
            Error::new(
                name,
                format!("{name}: unexpected value type for this directive"),
            )
        };
        macro_rules! text {
            () => {
                match value {
                    Value::Text(t) => t,
                    _ => return Err(wrong()),
                }
            };
        }
        macro_rules! flag {
            () => {
                match value {
                    Value::Flag(b) => b,
                    _ => return Err(wrong()),
                }
            };
        }
        macro_rules! int {
            () => {
                match value {
                    Value::Int(n) => narrow(id, n)?,
                    _ => return Err(wrong()),
                }
            };
        }
        match id {
            Id::Root => self.root = Some(text!()),
            Id::Ctl => match value {
                Value::Pairs(pairs) => {
                    for (key, text) in pairs {
                        let typed = value::ctl_value(&text)
                            .map_err(|e| Error::new(name, format!("{name} {key}: {e}")))?;
                        self.ctl.push((key, typed));
                    }
                }
                _ => return Err(wrong()),
            },
            Id::DumpConfigManifest => self.dump_config_manifest = Some(text!()),
            Id::DefaultRuby => self.default_ruby = text!(),
            Id::LogLevel => self.log_level = int!(),
            Id::LogFile => self.log_file = Some(text!()),
            Id::DisableLogPrefix => self.disable_log_prefix = flag!(),
            Id::SocketBacklog => self.socket_backlog = int!(),
            Id::FileDescriptorLogFile => self.file_descriptor_log_file = Some(text!()),
            Id::MaxPoolSize => self.max_pool_size = int!(),
            Id::PoolIdleTime => self.pool_idle_time = int!(),
            Id::ResponseBufferHighWatermark => self.response_buffer_high_watermark = int!(),
            Id::UserSwitching => self.user_switching = flag!(),
            Id::DefaultUser => self.default_user = text!(),
            Id::DefaultGroup => self.default_group = Some(text!()),
            Id::DataBufferDir => self.data_buffer_dir = Some(text!()),
            Id::InstanceRegistryDir => self.instance_registry_dir = Some(text!()),
            Id::SpawnDir => self.spawn_dir = Some(text!()),
            Id::DisableSecurityUpdateCheck => self.disable_security_update_check = flag!(),
            Id::SecurityUpdateCheckProxy => self.security_update_check_proxy = Some(text!()),
            Id::DisableAnonymousTelemetry => self.disable_anonymous_telemetry = flag!(),
            Id::AnonymousTelemetryProxy => self.anonymous_telemetry_proxy = Some(text!()),
            Id::StatThrottleRate => self.stat_throttle_rate = int!(),
            Id::PreStart => match value {
                Value::List(urls) => self.prestart_urls.extend(urls),
                _ => return Err(wrong()),
            },
            Id::Turbocaching => self.turbocaching = flag!(),
            Id::ShowVersionInHeader => self.show_version_in_header = flag!(),
            Id::MaxInstancesPerApp => self.max_instances_per_app = int!(),
            Id::AdminPanelUrl => self.admin_panel_url = Some(text!()),
            Id::AdminPanelAuthType => self.admin_panel_auth_type = Some(text!()),
            Id::AdminPanelUsername => self.admin_panel_username = Some(text!()),
            Id::AdminPanelPassword => self.admin_panel_password = Some(text!()),
            Id::FlyWith => self.fly_with = Some(text!()),
            _ => {
                return Err(Error::new(
                    name,
                    format!("{name} is not a global directive"),
                ));
            }
        }
        Ok(())
    }

    /// A global directive's current value; `None` when unset (an optional
    /// setting, or an empty list) or not global.
    pub fn value(&self, id: Id) -> Option<Value> {
        let text = |s: &Option<String>| s.clone().map(Value::Text);
        let list = |l: &Vec<String>| (!l.is_empty()).then(|| Value::List(l.clone()));
        Some(match id {
            Id::Root => return text(&self.root),
            Id::Ctl => {
                if self.ctl.is_empty() {
                    return None;
                }
                Value::Pairs(
                    self.ctl
                        .iter()
                        .map(|(k, v)| (k.clone(), json_text(v)))
                        .collect(),
                )
            }
            Id::DumpConfigManifest => return text(&self.dump_config_manifest),
            Id::DefaultRuby => Value::Text(self.default_ruby.clone()),
            Id::LogLevel => Value::Int(self.log_level.into()),
            Id::LogFile => return text(&self.log_file),
            Id::DisableLogPrefix => Value::Flag(self.disable_log_prefix),
            Id::SocketBacklog => Value::Int(self.socket_backlog.into()),
            Id::FileDescriptorLogFile => return text(&self.file_descriptor_log_file),
            Id::MaxPoolSize => Value::Int(self.max_pool_size.into()),
            Id::PoolIdleTime => Value::Int(self.pool_idle_time as i64),
            Id::ResponseBufferHighWatermark => {
                Value::Int(self.response_buffer_high_watermark as i64)
            }
            Id::UserSwitching => Value::Flag(self.user_switching),
            Id::DefaultUser => Value::Text(self.default_user.clone()),
            Id::DefaultGroup => return text(&self.default_group),
            Id::DataBufferDir => return text(&self.data_buffer_dir),
            Id::InstanceRegistryDir => return text(&self.instance_registry_dir),
            Id::SpawnDir => return text(&self.spawn_dir),
            Id::DisableSecurityUpdateCheck => Value::Flag(self.disable_security_update_check),
            Id::SecurityUpdateCheckProxy => return text(&self.security_update_check_proxy),
            Id::DisableAnonymousTelemetry => Value::Flag(self.disable_anonymous_telemetry),
            Id::AnonymousTelemetryProxy => return text(&self.anonymous_telemetry_proxy),
            Id::StatThrottleRate => Value::Int(self.stat_throttle_rate as i64),
            Id::PreStart => return list(&self.prestart_urls),
            Id::Turbocaching => Value::Flag(self.turbocaching),
            Id::ShowVersionInHeader => Value::Flag(self.show_version_in_header),
            Id::MaxInstancesPerApp => Value::Int(self.max_instances_per_app.into()),
            Id::AdminPanelUrl => return text(&self.admin_panel_url),
            Id::AdminPanelAuthType => return text(&self.admin_panel_auth_type),
            Id::AdminPanelUsername => return text(&self.admin_panel_username),
            Id::AdminPanelPassword => return text(&self.admin_panel_password),
            Id::FlyWith => return text(&self.fly_with),
            _ => return None,
        })
    }

    /// The config as the JSON object the agent receives: one key per global
    /// directive (its table field name; `null` when unset). `ctl` is an array
    /// of `[name, value]` pairs, in order.
    pub fn to_json(&self) -> Json {
        let mut object = Map::new();
        for d in DIRECTIVES.iter().filter(|d| d.is_global()) {
            let json = match self.value(d.id) {
                None if matches!(d.kind, Kind::List(_) | Kind::KeyValue) => Json::Array(Vec::new()),
                None => Json::Null,
                Some(Value::Flag(b)) => Json::Bool(b),
                Some(Value::Int(n)) => Json::from(n),
                Some(Value::Text(t)) => Json::String(t),
                Some(Value::Choice(c)) => Json::String(c.to_owned()),
                Some(Value::List(items)) => Json::from(items),
                Some(Value::Pairs(_)) => Json::Array(
                    self.ctl
                        .iter()
                        .map(|(k, v)| Json::Array(vec![Json::String(k.clone()), v.clone()]))
                        .collect(),
                ),
            };
            object.insert(d.field.to_owned(), json);
        }
        Json::Object(object)
    }

    /// Reads the JSON of [`ServerConfig::to_json`]. Missing and `null` keys
    /// take the default; unknown keys are ignored (the module may add its
    /// own, such as `server_software`); values are checked as the directives
    /// are.
    pub fn from_json(v: &Json) -> Result<ServerConfig, Error> {
        let object = v.as_object().ok_or_else(|| {
            Error::new(
                "PassengerRoot",
                "the server configuration is not a JSON object".to_owned(),
            )
        })?;
        let mut config = ServerConfig::default();
        for d in DIRECTIVES.iter().filter(|d| d.is_global()) {
            let Some(json) = object.get(d.field).filter(|j| !j.is_null()) else {
                continue;
            };
            let bad = || {
                Error::new(
                    d.name,
                    format!(
                        "{}: JSON key {} has the wrong type: {json}",
                        d.name, d.field
                    ),
                )
            };
            match d.kind {
                Kind::KeyValue => {
                    config.ctl.clear();
                    for pair in json.as_array().ok_or_else(bad)? {
                        match pair.as_array().map(Vec::as_slice) {
                            Some([Json::String(k), v]) => config.ctl.push((k.clone(), v.clone())),
                            _ => return Err(bad()),
                        }
                    }
                }
                Kind::List(_) => {
                    let mut items = Vec::new();
                    for item in json.as_array().ok_or_else(bad)? {
                        let text = item.as_str().ok_or_else(bad)?;
                        if let Value::List(one) = value::parse_value(d, d.name, text)? {
                            items.extend(one);
                        }
                    }
                    config.apply(d.id, Value::List(items))?;
                }
                _ => {
                    let text = match json {
                        Json::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
                        Json::Number(n) => n.to_string(),
                        Json::String(s) => s.clone(),
                        _ => return Err(bad()),
                    };
                    config.apply(d.id, value::parse_value(d, d.name, &text)?)?;
                }
            }
        }
        Ok(config)
    }

    /// Checks what the values mean, once at `post_config`: the default user
    /// and group exist, the directories exist, paths are absolute.
    pub fn check(&self) -> Result<(), Error> {
        use nix::unistd::{Group, User};
        let name = |id: Id| table::directive(id).name;
        match User::from_name(&self.default_user) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Error::new(
                    name(Id::DefaultUser),
                    format!(
                        "{}: there is no user named \"{}\"",
                        name(Id::DefaultUser),
                        self.default_user
                    ),
                ));
            }
            Err(e) => {
                return Err(Error::new(
                    name(Id::DefaultUser),
                    format!(
                        "{}: cannot look up user \"{}\": {e}",
                        name(Id::DefaultUser),
                        self.default_user
                    ),
                ));
            }
        }
        if let Some(group) = &self.default_group
            && !matches!(Group::from_name(group), Ok(Some(_)))
        {
            let n = name(Id::DefaultGroup);
            return Err(Error::new(
                n,
                format!("{n}: there is no group named \"{group}\""),
            ));
        }
        for (id, dir) in [
            (Id::Root, &self.root),
            (Id::DataBufferDir, &self.data_buffer_dir),
            (Id::InstanceRegistryDir, &self.instance_registry_dir),
            (Id::SpawnDir, &self.spawn_dir),
        ] {
            if let Some(dir) = dir
                && !std::path::Path::new(dir).is_dir()
            {
                let n = name(id);
                return Err(Error::new(
                    n,
                    format!("{n}: {dir} is not an existing directory"),
                ));
            }
        }
        for (id, path) in [(Id::LogFile, &self.log_file), (Id::FlyWith, &self.fly_with)] {
            if let Some(path) = path
                && !path.starts_with('/')
            {
                let n = name(id);
                return Err(Error::new(
                    n,
                    format!("{n}: {path} is not an absolute path"),
                ));
            }
        }
        Ok(())
    }
}

/// A `PassengerCtl` value back in directive syntax.
fn json_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::table::Fallback;

    #[test]
    fn defaults_are_the_tables() {
        let c = ServerConfig::default();
        assert_eq!(c.max_pool_size, 6);
        assert_eq!(c.pool_idle_time, 300);
        assert_eq!(c.log_level, 3);
        assert_eq!(c.stat_throttle_rate, 10);
        assert_eq!(c.socket_backlog, 2048);
        assert_eq!(c.default_user, "nobody");
        assert_eq!(c.default_ruby, "ruby");
        assert!(c.user_switching && c.show_version_in_header && c.turbocaching);
        assert_eq!(c.root, None);
        assert_eq!(c.response_buffer_high_watermark, 134_217_728);
        for d in DIRECTIVES.iter().filter(|d| d.is_global()) {
            if let Fallback::Is(_) = d.default {
                assert_eq!(c.value(d.id), value::default_value(d.id), "{}", d.name);
            }
        }
    }

    /// Every global directive has a field: setting its example shows up in
    /// `value`, in the JSON under its field name, and survives the round trip.
    #[test]
    fn every_global_directive_round_trips_through_json() {
        let mut c = ServerConfig::default();
        for d in DIRECTIVES.iter().filter(|d| d.is_global()) {
            let v = value::parse_value(d, d.name, d.example).unwrap();
            c.apply(d.id, v.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", d.name));
            let got = c
                .value(d.id)
                .unwrap_or_else(|| panic!("{} has no field", d.name));
            match (&v, &got) {
                (Value::Pairs(_), Value::Pairs(p)) => assert_eq!(p.len(), 1, "{}", d.name),
                _ => assert_eq!(got, v, "{}", d.name),
            }
            assert!(
                c.to_json().get(d.field).is_some_and(|j| !j.is_null()),
                "{}",
                d.name
            );
        }
        let json = c.to_json();
        assert_eq!(ServerConfig::from_json(&json).unwrap(), c);
        assert_eq!(
            json["ctl"],
            serde_json::json!([["hook_detached_process", "/usr/local/bin/on-detach"]])
        );
        assert_eq!(json["max_pool_size"], serde_json::json!(6));
        assert!(c.apply(Id::AppRoot, Value::Text("/x".into())).is_err());
    }

    #[test]
    fn from_json_takes_defaults_ignores_unknown_keys_and_checks_values() {
        let c = ServerConfig::from_json(
            &serde_json::json!({"server_software": "Apache", "max_pool_size": 9}),
        )
        .unwrap();
        assert_eq!(c.max_pool_size, 9);
        assert_eq!(c.pool_idle_time, 300);
        let e = ServerConfig::from_json(&serde_json::json!({"max_pool_size": 0})).unwrap_err();
        assert_eq!(e.directive(), "PassengerMaxPoolSize");
        assert!(ServerConfig::from_json(&serde_json::json!({"max_pool_size": "x"})).is_err());
        assert!(ServerConfig::from_json(&serde_json::json!([])).is_err());
        let c =
            ServerConfig::from_json(&serde_json::json!({"ctl": [["a", 1], ["b", {"x": true}]]}))
                .unwrap();
        assert_eq!(
            c.ctl,
            vec![
                ("a".to_owned(), serde_json::json!(1)),
                ("b".to_owned(), serde_json::json!({"x": true}))
            ]
        );
    }

    #[test]
    fn check_finds_missing_users_and_directories() {
        let mut c = ServerConfig {
            default_user: "root".into(),
            ..ServerConfig::default()
        };
        assert_eq!(c.check(), Ok(()));
        c.default_user = "no-such-user-mp".into();
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("no user named \"no-such-user-mp\"")
        );
        c.default_user = "root".into();
        c.spawn_dir = Some("/nonexistent/dir".into());
        assert_eq!(c.check().unwrap_err().directive(), "PassengerSpawnDir");
        c.spawn_dir = None;
        c.default_group = Some("no-such-group-mp".into());
        assert_eq!(c.check().unwrap_err().directive(), "PassengerDefaultGroup");
    }
}

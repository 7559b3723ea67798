//! [`DirConfig`]: the per-directory configuration of one request, as Apache
//! merged it.
//!
//! `src/ffi/config.rs` builds one from the C struct on every request, so it
//! is kept small: only the directives that are set are stored, in table
//! order, and the accessors look them up. Defaults come from the table.

use super::table::{self, Directive, Fallback, Id, Kind};
use super::value::{self, Value};
use super::{AppType, Error};

/// Per-directory config as merged by Apache; every directive optional (unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirConfig {
    /// The directives that are set, in [`Id`] order.
    entries: Vec<(Id, Value)>,
}

impl DirConfig {
    /// An empty config: every directive unset.
    pub fn new() -> DirConfig {
        DirConfig::default()
    }

    /// Builds a config from `(directive, value)` lines as if they were
    /// written in one `<Directory>` section: names may be aliases, each line
    /// is checked as Apache would, a later line replaces an earlier one, and
    /// repeatable directives accumulate. Global directives are refused.
    /// For tests and tools; Apache's configs come through the FFI.
    pub fn from_directives(lines: &[(&str, &str)]) -> Result<DirConfig, Error> {
        let mut config = DirConfig::new();
        for (name, text) in lines {
            let d = value::lookup(name).ok_or_else(|| {
                Error::new(name, format!("{name} is not a mod_passenger directive"))
            })?;
            let args: Vec<&str> = match d.kind {
                Kind::KeyValue => text.splitn(2, ' ').collect(),
                _ => vec![text],
            };
            value::check(d, name, value::Site::at(value::Section::Directory), &args)?;
            let parsed = value::parse_value(d, name, text)?;
            if d.stores() {
                config.add(d.id, parsed);
            }
        }
        Ok(config)
    }

    /// Sets a directive, or for a repeatable one adds to it. Keeps table
    /// order, and normalizes `PassengerBaseURI` (sorted, no duplicates, no `/`).
    pub fn add(&mut self, id: Id, value: Value) {
        match self.entries.binary_search_by_key(&id, |(i, _)| *i) {
            Ok(at) => match (&mut self.entries[at].1, value) {
                (Value::List(old), Value::List(new)) => old.extend(new),
                (Value::Pairs(old), Value::Pairs(new)) => old.extend(new),
                (slot, value) => *slot = value,
            },
            Err(at) => self.entries.insert(at, (id, value)),
        }
        if id == Id::BaseURI
            && let Ok(at) = self.entries.binary_search_by_key(&id, |(i, _)| *i)
            && let Value::List(uris) = &mut self.entries[at].1
        {
            uris.retain(|u| u != "/");
            uris.sort();
            uris.dedup();
        }
    }

    /// Appends a set directive in table order (the FFI reader's fast path;
    /// falls back to [`DirConfig::add`] when out of order).
    pub(crate) fn push(&mut self, id: Id, value: Value) {
        match self.entries.last() {
            Some((last, _)) if *last >= id => self.add(id, value),
            _ if id == Id::BaseURI => self.add(id, value),
            _ => self.entries.push((id, value)),
        }
    }

    /// The value of a directive, if set.
    pub fn get(&self, id: Id) -> Option<&Value> {
        self.entries.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// Every set directive with its value, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static Directive, &Value)> {
        self.entries
            .iter()
            .map(|(id, v)| (table::directive(*id), v))
    }

    fn text(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Some(Value::Text(t)) => Some(t),
            Some(Value::Choice(c)) => Some(c),
            _ => None,
        }
    }

    fn flag(&self, id: Id) -> bool {
        match self.get(id) {
            Some(Value::Flag(on)) => *on,
            _ => table::directive(id).default == Fallback::Is("on"),
        }
    }

    /// `PassengerEnabled` (default on): whether the module looks at this location.
    pub fn enabled(&self) -> bool {
        self.flag(Id::Enabled)
    }

    /// `PassengerAppRoot`.
    pub fn app_root(&self) -> Option<&str> {
        self.text(Id::AppRoot)
    }

    /// `PassengerAppType`, resolved (`python` gives [`AppType::Wsgi`]).
    pub fn app_type(&self) -> Option<AppType> {
        self.text(Id::AppType).and_then(AppType::parse)
    }

    /// `PassengerAppStartCommand`.
    pub fn app_start_command(&self) -> Option<&str> {
        self.text(Id::AppStartCommand)
    }

    /// `PassengerStartupFile`, relative to the app root.
    pub fn startup_file(&self) -> Option<&str> {
        self.text(Id::StartupFile)
    }

    /// `PassengerBaseURI`: sorted, without duplicates and without `/`.
    pub fn base_uris(&self) -> &[String] {
        match self.get(Id::BaseURI) {
            Some(Value::List(uris)) => uris,
            _ => &[],
        }
    }

    /// `PassengerAppEnv` (aliases `RailsEnv`, `RackEnv`); default `production`.
    pub fn app_env(&self) -> &str {
        self.text(Id::AppEnv)
            .unwrap_or(match table::directive(Id::AppEnv).default {
                Fallback::Is(env) => env,
                _ => "production",
            })
    }

    /// `PassengerAppGroupName`.
    pub fn app_group_name(&self) -> Option<&str> {
        self.text(Id::AppGroupName)
    }

    /// `PassengerHighPerformance` (default off).
    pub fn high_performance(&self) -> bool {
        self.flag(Id::HighPerformance)
    }

    /// `PassengerErrorOverride` (default off).
    pub fn error_override(&self) -> bool {
        self.flag(Id::ErrorOverride)
    }

    /// `PassengerAllowEncodedSlashes` (default off).
    pub fn allow_encoded_slashes(&self) -> bool {
        self.flag(Id::AllowEncodedSlashes)
    }

    /// `PassengerBufferResponse` (default off).
    pub fn buffer_response(&self) -> bool {
        self.flag(Id::BufferResponse)
    }

    /// `PassengerBufferUpload` (default on).
    pub fn buffer_upload(&self) -> bool {
        self.flag(Id::BufferUpload)
    }

    /// Every set per-application/per-location directive that the agent acts
    /// on, as (canonical name, value in directive syntax), e.g.
    /// `("PassengerMinInstances", "2")`; a repeatable directive gives one
    /// pair per element. Left out: the directives only the module acts on
    /// (`PassengerEnabled`, `PassengerBaseURI`, ...; see `to_agent` in the
    /// table). The module adds the values it resolves itself (app root,
    /// type, startup file, matched base URI); [`super::AppOptions::from_pairs`]
    /// lets a later pair replace an earlier one.
    pub fn option_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::with_capacity(self.entries.len());
        for (d, value) in self.iter().filter(|(d, _)| d.to_agent) {
            match value {
                Value::List(items) => pairs.extend(items.iter().map(|i| (d.name, i.clone()))),
                Value::Pairs(items) => {
                    pairs.extend(items.iter().map(|(n, v)| (d.name, format!("{n} {v}"))))
                }
                other => pairs.extend(other.to_text().map(|t| (d.name, t))),
            }
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_directives_take_the_table_defaults() {
        let c = DirConfig::new();
        assert!(c.enabled());
        assert!(!c.high_performance());
        assert!(!c.error_override());
        assert!(!c.allow_encoded_slashes());
        assert!(!c.buffer_response());
        assert!(c.buffer_upload());
        assert_eq!(c.app_env(), "production");
        assert_eq!(c.app_root(), None);
        assert!(c.base_uris().is_empty());
        assert!(c.option_pairs().is_empty());
    }

    #[test]
    fn aliases_set_the_canonical_directive() {
        let c = DirConfig::from_directives(&[
            ("RailsEnv", "development"),
            ("RackBaseURI", "/b"),
            ("RailsBaseURI", "/a"),
            ("PassengerBaseURI", "/"),
            ("PassengerBaseURI", "/a"),
            ("PassengerAppType", "python"),
            ("PassengerAppRoot", "/srv/app"),
            ("PassengerEnabled", "off"),
        ])
        .unwrap();
        assert_eq!(c.app_env(), "development");
        assert_eq!(c.base_uris(), ["/a", "/b"]);
        assert_eq!(c.app_type(), Some(AppType::Wsgi));
        assert_eq!(c.app_root(), Some("/srv/app"));
        assert!(!c.enabled());
    }

    #[test]
    fn option_pairs_send_what_the_agent_needs_by_canonical_name() {
        let c = DirConfig::from_directives(&[
            ("PassengerMinInstances", "2"),
            ("RailsSpawnMethod", "conservative"),
            ("PassengerHighPerformance", "on"),
            ("PassengerBaseURI", "/x"),
            ("PassengerStickySessions", "on"),
            ("PassengerMaxRequestTime", "30"),
            ("RailsEnv", "staging"),
            ("RailsSpawnServer", "/whatever"),
        ])
        .unwrap();
        assert_eq!(
            c.option_pairs(),
            vec![
                ("PassengerAppEnv", "staging".to_owned()),
                ("PassengerMinInstances", "2".to_owned()),
                ("PassengerSpawnMethod", "direct".to_owned()),
                ("PassengerStickySessions", "on".to_owned()),
                ("PassengerMaxRequestTime", "30".to_owned()),
            ]
        );
    }

    #[test]
    fn bad_lines_are_refused_like_apache_refuses_them() {
        let e = DirConfig::from_directives(&[("PassengerMinInstances", "-1")]).unwrap_err();
        assert_eq!(e.directive(), "PassengerMinInstances");
        assert!(DirConfig::from_directives(&[("PassengerMaxPoolSize", "6")]).is_err());
        assert!(DirConfig::from_directives(&[("PassengerBogus", "6")]).is_err());
    }
}

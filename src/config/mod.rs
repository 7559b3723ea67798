//! Configuration: the `Passenger*` directives and the typed configs built
//! from them.
//!
//! - [`table`]: every directive declared once (name, aliases, context,
//!   type, bounds, default, doc). The C command table, the FFI structs
//!   (`ffi/mp_config.h`) and `docs/directives.md` are generated from it.
//! - [`value`]: the checks, run when Apache parses a directive (so a bad
//!   value stops `apache2 -t`) and again when text is decoded.
//! - [`dir`]: [`DirConfig`], the per-directory config as Apache merged it,
//!   copied from the C struct on each request.
//! - [`server`]: [`ServerConfig`], the server-wide config the module hands
//!   the agent at startup (as JSON).
//! - [`app`]: [`AppOptions`], one application's options as the agent sees
//!   them, decoded from the pairs the module sends with each request.
//!
//! Apache does the merging (in C, `mod_passenger/mp_config.c`); this module
//! gives the merged values meaning. Unset values stay unset until a typed
//! config applies the table's default, so "not set" and "set to the
//! default" stay apart.

pub mod app;
#[cfg(test)]
mod codegen;
pub mod dir;
pub mod server;
pub mod table;
pub mod value;

use std::fmt;

pub use app::AppOptions;
pub use dir::DirConfig;
pub use server::ServerConfig;
pub use table::{DIRECTIVES, Directive, Id};
pub use value::Value;

/// A configuration error: names the directive (as written) and says what is
/// allowed. Its text becomes Apache's startup error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    directive: String,
    message: String,
}

impl Error {
    /// An error about `directive`; `message` is the whole sentence, which
    /// names the directive itself.
    pub fn new(directive: &str, message: String) -> Error {
        Error {
            directive: directive.to_owned(),
            message,
        }
    }

    /// The directive, as written in the configuration.
    pub fn directive(&self) -> &str {
        &self.directive
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An application's type, which picks the loader that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppType {
    /// Ruby, through Rack (`config.ru`).
    Rack,
    /// Python, through WSGI (`passenger_wsgi.py`).
    Wsgi,
    /// Node.js (`app.js`).
    Node,
    /// Meteor (`.meteor`).
    Meteor,
    /// Any language, started with `PassengerAppStartCommand`.
    Generic,
}

impl AppType {
    /// Parses a type name or alias (any case): `rack`/`ruby`, `wsgi`/`python`,
    /// `node`/`nodejs`, `meteor`, and `generic` (which only the module sends:
    /// `PassengerAppType` does not accept it).
    pub fn parse(s: &str) -> Option<AppType> {
        if s.eq_ignore_ascii_case("generic") {
            return Some(AppType::Generic);
        }
        let (_, canonical) = table::APP_TYPES
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(s))?;
        Some(match *canonical {
            "rack" => AppType::Rack,
            "wsgi" => AppType::Wsgi,
            "node" => AppType::Node,
            _ => AppType::Meteor,
        })
    }

    /// The canonical name: `rack`, `wsgi`, `node`, `meteor` or `generic`.
    pub fn name(&self) -> &'static str {
        match self {
            AppType::Rack => "rack",
            AppType::Wsgi => "wsgi",
            AppType::Node => "node",
            AppType::Meteor => "meteor",
            AppType::Generic => "generic",
        }
    }

    /// The startup file autodetection looks for: `config.ru`,
    /// `passenger_wsgi.py`, `app.js`, `.meteor`; empty for generic apps,
    /// which have a start command instead.
    pub fn default_startup_file(&self) -> &'static str {
        match self {
            AppType::Rack => "config.ru",
            AppType::Wsgi => "passenger_wsgi.py",
            AppType::Node => "app.js",
            AppType::Meteor => ".meteor",
            AppType::Generic => "",
        }
    }
}

/// How application processes are started (`PassengerSpawnMethod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpawnMethod {
    /// Load the app once in a preloader and fork processes from it.
    Smart,
    /// Start each process from scratch.
    Direct,
}

impl SpawnMethod {
    /// Parses `smart`, `direct` or their old names `smart-lv2`, `conservative`.
    pub fn parse(s: &str) -> Option<SpawnMethod> {
        match table::SPAWN_METHODS
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(s))?
            .1
        {
            "smart" => Some(SpawnMethod::Smart),
            _ => Some(SpawnMethod::Direct),
        }
    }

    /// `smart` or `direct`.
    pub fn name(&self) -> &'static str {
        match self {
            SpawnMethod::Smart => "smart",
            SpawnMethod::Direct => "direct",
        }
    }
}

/// How one process serves requests (`PassengerConcurrencyModel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConcurrencyModel {
    /// One request at a time per process.
    Process,
    /// `PassengerThreadCount` requests at a time per process.
    Thread,
}

#[cfg(test)]
mod tests {
    use super::*;
    use table::{Context, Kind, Status};

    #[test]
    fn app_types_parse_every_word_the_directive_accepts() {
        for (word, canonical) in table::APP_TYPES {
            assert_eq!(
                AppType::parse(word).map(|t| t.name()),
                Some(*canonical),
                "{word}"
            );
        }
        assert_eq!(AppType::parse("generic"), Some(AppType::Generic));
        assert_eq!(AppType::parse("Python"), Some(AppType::Wsgi));
        assert_eq!(AppType::parse("php"), None);
        assert_eq!(AppType::Wsgi.default_startup_file(), "passenger_wsgi.py");
        for t in [
            AppType::Rack,
            AppType::Wsgi,
            AppType::Node,
            AppType::Meteor,
            AppType::Generic,
        ] {
            assert_eq!(AppType::parse(t.name()), Some(t));
        }
    }

    #[test]
    fn spawn_methods_parse_every_word_the_directive_accepts() {
        for (word, canonical) in table::SPAWN_METHODS {
            assert_eq!(SpawnMethod::parse(word).map(|m| m.name()), Some(*canonical));
        }
        assert_eq!(SpawnMethod::parse("fast"), None);
    }

    /// The table's own rules: names, aliases and fields are unique, variant
    /// names follow directive names, and each context has the storage it needs.
    #[test]
    fn the_table_is_consistent() {
        let mut names = std::collections::HashSet::new();
        let mut fields = std::collections::HashSet::new();
        for d in DIRECTIVES {
            for name in std::iter::once(&d.name).chain(d.aliases) {
                assert!(
                    names.insert(name.to_ascii_lowercase()),
                    "{name} is declared twice"
                );
            }
            let variant = format!("{:?}", d.id);
            assert_eq!(
                d.name.strip_prefix("Passenger").unwrap_or(d.name),
                variant,
                "Id for {}",
                d.name
            );
            assert!(!d.doc.is_empty(), "{} has no doc", d.name);
            match d.kind {
                Kind::Ignored => {
                    assert!(d.field.is_empty(), "{}", d.name);
                    assert_eq!(d.context, Context::Anywhere, "{}", d.name);
                    assert!(
                        matches!(d.status, Status::Obsolete | Status::Removed(_)),
                        "{}",
                        d.name
                    );
                }
                _ => {
                    assert!(
                        d.field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                            && !d.field.is_empty(),
                        "{}: field {:?}",
                        d.name,
                        d.field
                    );
                    assert!(
                        fields.insert((d.is_global(), d.field)),
                        "field {} twice",
                        d.field
                    );
                    assert_ne!(d.context, Context::Anywhere, "{}", d.name);
                }
            }
            if d.is_global() {
                assert!(!d.to_agent, "{}", d.name);
            }
        }
    }
}

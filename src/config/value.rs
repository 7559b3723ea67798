//! Checking directives against the table: where they may appear and what
//! values they take.
//!
//! [`check`] is what runs when Apache parses a directive (through
//! `mp_directive_check` in `src/ffi/config.rs`), so a bad value or a
//! directive in the wrong place stops `apache2 -t`. The same parsers decode
//! values again wherever text becomes a typed value: the agent's
//! [`super::AppOptions::from_pairs`], [`super::ServerConfig::from_json`] and
//! [`super::DirConfig::from_directives`]. The rules live only here and in
//! the table.

use super::Error;
use super::table::{Context, Directive, Id, Item, Kind, Override, Status};

/// A directive's value, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `On`/`Off`.
    Flag(bool),
    /// An integer within the directive's bounds.
    Int(i64),
    /// One of a [`Kind::Choice`]'s canonical words.
    Choice(&'static str),
    /// Text or a path.
    Text(String),
    /// The elements of a repeatable directive, in order.
    List(Vec<String>),
    /// The name/value pairs of a [`Kind::KeyValue`] directive, in order.
    Pairs(Vec<(String, String)>),
}

impl Value {
    /// The value in directive syntax (`on`, `6`, `smart`, the text). Lists
    /// and pairs have no single text; they give `None`.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Flag(on) => Some(if *on { "on" } else { "off" }.to_owned()),
            Value::Int(n) => Some(n.to_string()),
            Value::Choice(word) => Some((*word).to_owned()),
            Value::Text(text) => Some(text.clone()),
            Value::List(_) | Value::Pairs(_) => None,
        }
    }
}

/// Where a directive appears, as the shim reports it (`MP_SECTION_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The main server config, outside any section.
    Server,
    /// Inside `<VirtualHost>`, outside directory sections.
    VirtualHost,
    /// Inside `<Directory>` or `<Location>` (or their `Match` forms).
    Directory,
    /// Inside `<Files>`, `<If>`, `<Limit>` or `<Proxy>` (or their variants).
    Other,
    /// In an `.htaccess` file.
    Htaccess,
}

/// Where a directive appears, with what the shim knows about `.htaccess`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// The section.
    pub section: Section,
    /// In `.htaccess`: `AllowOverride` grants `Options`, or
    /// `AllowOverrideList` names the directive.
    pub htaccess_options: bool,
}

impl Site {
    /// A site outside `.htaccess`.
    pub const fn at(section: Section) -> Site {
        Site {
            section,
            htaccess_options: false,
        }
    }
}

/// A directive use that may go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// What the C struct stores for flags (0/1), choices (the index of the
    /// accepted word in the list) and integers; 0 for other kinds.
    pub number: i64,
    /// Warnings to log once, each starting with its stable tag (`MP10xx:`).
    pub warnings: Vec<String>,
}

/// Log tag: a global directive inside `<VirtualHost>`.
pub const TAG_GLOBAL_IN_VHOST: &str = "MP1001";
/// Log tag: an Enterprise directive that is not active yet.
pub const TAG_NOT_ACTIVE: &str = "MP1002";
/// Log tag: a directive that has no effect in mod_passenger.
pub const TAG_NO_EFFECT: &str = "MP1003";
/// Log tag: an obsolete directive.
pub const TAG_OBSOLETE: &str = "MP1004";

/// Checks one use of directive `d`, written as `used` (its name or an
/// alias), at `site`, with `args` as Apache split them. On success says what
/// to store and what to log.
pub fn check(
    d: &'static Directive,
    used: &str,
    site: Site,
    args: &[&str],
) -> Result<Checked, Error> {
    if let Status::Removed(advice) = d.status {
        return Err(Error::new(
            used,
            format!("{used} is no longer supported: {advice}"),
        ));
    }
    let mut warnings = Vec::new();
    check_site(d, used, site, &mut warnings)?;
    let number = check_args(d, used, args)?;
    match d.status {
        Status::Active | Status::Removed(_) => {}
        Status::Enterprise => warnings.push(format!(
            "{TAG_NOT_ACTIVE}: {used} is accepted but not active yet in this version of \
             mod_passenger: it has no effect for now"
        )),
        Status::NoEffect => warnings.push(format!(
            "{TAG_NO_EFFECT}: {used} is accepted but has no effect in mod_passenger"
        )),
        Status::Obsolete => warnings.push(format!(
            "{TAG_OBSOLETE}: {used} is obsolete and has no effect; remove it"
        )),
    }
    Ok(Checked { number, warnings })
}

const APP_PLACES: &str = "the server config, <VirtualHost>, <Directory> and <Location>";

fn check_site(
    d: &Directive,
    used: &str,
    site: Site,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    let refuse = |message: String| Err(Error::new(used, message));
    match (d.context, site.section) {
        (Context::Anywhere, _) => Ok(()),
        (Context::Global, Section::Server) => Ok(()),
        (Context::Global, Section::VirtualHost) => {
            warnings.push(format!(
                "{TAG_GLOBAL_IN_VHOST}: {used} inside <VirtualHost> applies to the whole server \
                 (every virtual host), not only this one: it is a global directive; move it to \
                 the main server config"
            ));
            Ok(())
        }
        (Context::Global, Section::Htaccess) => refuse(format!(
            "{used} is not allowed in .htaccess files: it is a global directive, allowed only \
             in the main server config"
        )),
        (Context::Global, Section::Directory | Section::Other) => refuse(format!(
            "{used} is not allowed inside <Directory>, <Location>, <Files>, <If>, <Limit> or \
             <Proxy>: it is a global directive, allowed only in the main server config"
        )),
        (Context::App | Context::Location(_), Section::Other) => refuse(format!(
            "{used} is not allowed inside <Files>, <If>, <Limit> or <Proxy>: it is allowed in \
             {APP_PLACES}{}",
            if d.context == Context::App {
                ""
            } else {
                " (and in .htaccess)"
            }
        )),
        (Context::App, Section::Htaccess) => refuse(format!(
            "{used} is not allowed in .htaccess files: it is allowed in {APP_PLACES}"
        )),
        (Context::Location(Override::Options), Section::Htaccess) if !site.htaccess_options => {
            refuse(format!(
                "{used} is allowed in .htaccess only where `AllowOverride Options` (or \
                 `AllowOverrideList {used}`) is in effect"
            ))
        }
        (Context::App | Context::Location(_), _) => Ok(()),
    }
}

/// Checks the arguments; returns the number stored for flags, choices and integers.
fn check_args(d: &Directive, used: &str, args: &[&str]) -> Result<i64, Error> {
    let first = args.first().copied().unwrap_or("");
    match d.kind {
        Kind::Flag => parse_flag(used, first).map(i64::from),
        Kind::Int { .. } => parse_int(d, used, first),
        Kind::Choice(choices) => choice_index(choices, used, first).map(|i| i as i64),
        Kind::Text | Kind::Path => non_empty(used, first).map(|_| 0),
        Kind::List(item) => check_item(item, used, first).map(|_| 0),
        Kind::KeyValue => {
            check_ctl(used, first, args.get(1).copied().unwrap_or(""))?;
            Ok(0)
        }
        Kind::Ignored => Ok(0),
    }
}

/// Parses `On`/`Off` in any case.
pub fn parse_flag(used: &str, arg: &str) -> Result<bool, Error> {
    if arg.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if arg.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(Error::new(
            used,
            format!("{used} must be On or Off, not \"{arg}\""),
        ))
    }
}

/// Parses a decimal integer and checks the directive's bounds.
pub fn parse_int(d: &Directive, used: &str, arg: &str) -> Result<i64, Error> {
    let Kind::Int { min, max, .. } = d.kind else {
        return Err(Error::new(used, format!("{used} does not take a number")));
    };
    let range = if max >= i64::from(i32::MAX) {
        format!("of at least {min}")
    } else {
        format!("from {min} to {max}")
    };
    let digits = arg.strip_prefix(['-', '+']).unwrap_or(arg);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::new(
            used,
            format!("{used} must be a whole number {range}, not \"{arg}\""),
        ));
    }
    match arg.parse::<i64>() {
        Ok(n) if n < min => Err(Error::new(
            used,
            format!("{used} must be at least {min}, not {arg}"),
        )),
        Ok(n) if n > max => Err(Error::new(
            used,
            format!("{used} must be at most {max}, not {arg}"),
        )),
        Ok(n) => Ok(n),
        Err(_) if arg.starts_with('-') => Err(Error::new(
            used,
            format!("{used} must be at least {min}, not {arg}"),
        )),
        Err(_) => Err(Error::new(
            used,
            format!("{used} must be at most {max}, not {arg}"),
        )),
    }
}

/// Finds `arg` (any case) in a choice list; returns its index.
pub fn choice_index(
    choices: &[(&str, &'static str)],
    used: &str,
    arg: &str,
) -> Result<usize, Error> {
    if let Some(i) = choices
        .iter()
        .position(|(word, _)| word.eq_ignore_ascii_case(arg))
    {
        return Ok(i);
    }
    let mut canonical: Vec<&str> = Vec::new();
    for (_, c) in choices {
        if !canonical.contains(c) {
            canonical.push(c);
        }
    }
    let aliases: Vec<&str> = choices
        .iter()
        .map(|(w, _)| *w)
        .filter(|w| !canonical.contains(w))
        .collect();
    let mut allowed = one_of(&canonical);
    if !aliases.is_empty() {
        allowed.push_str(&format!(" (or the old names {})", aliases.join(", ")));
    }
    Err(Error::new(
        used,
        format!("{used} must be {allowed}, not \"{arg}\""),
    ))
}

/// "a", "a or b", "a, b or c".
fn one_of(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

fn non_empty<'a>(used: &str, arg: &'a str) -> Result<&'a str, Error> {
    if arg.is_empty() {
        Err(Error::new(
            used,
            format!("{used} needs a value; it may not be empty"),
        ))
    } else {
        Ok(arg)
    }
}

/// Checks one element of a repeatable directive.
pub fn check_item(item: Item, used: &str, arg: &str) -> Result<(), Error> {
    non_empty(used, arg)?;
    match item {
        Item::Text => Ok(()),
        Item::BaseUri => {
            if !arg.starts_with('/') {
                Err(Error::new(
                    used,
                    format!("{used} must start with \"/\", as in /app; \"{arg}\" does not"),
                ))
            } else if arg.len() > 1 && arg.ends_with('/') {
                Err(Error::new(
                    used,
                    format!(
                        "{used} must not end with \"/\": write \"{}\"",
                        arg.trim_end_matches('/')
                    ),
                ))
            } else {
                Ok(())
            }
        }
        Item::Url => {
            let rest = arg
                .strip_prefix("http://")
                .or_else(|| arg.strip_prefix("https://"));
            match rest {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
                _ => Err(Error::new(
                    used,
                    format!("{used} must be an http:// or https:// URL with a host, not \"{arg}\""),
                )),
            }
        }
    }
}

/// Checks a `PassengerCtl name value` pair.
pub fn check_ctl(used: &str, name: &str, value: &str) -> Result<(), Error> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::new(
            used,
            format!("{used} needs an option name of letters, digits and \"_\", not \"{name}\""),
        ));
    }
    ctl_value(value)
        .map(|_| ())
        .map_err(|e| Error::new(used, format!("{used} {name}: {e}")))
}

/// Types a `PassengerCtl` value: integer, decimal number, boolean
/// (`true/false/on/off/yes/no`, any case), JSON when it starts with `{` or
/// `[`, else text.
pub fn ctl_value(text: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if text.starts_with('{') || text.starts_with('[') {
        return serde_json::from_str(text)
            .map_err(|e| format!("the value starts like JSON but is not valid JSON ({e})"));
    }
    if let Ok(n) = text.parse::<i64>() {
        return Ok(J::from(n));
    }
    if let Ok(x) = text.parse::<f64>()
        && x.is_finite()
        && text.bytes().any(|b| b.is_ascii_digit())
        && let Some(n) = serde_json::Number::from_f64(x)
    {
        return Ok(J::Number(n));
    }
    for (words, b) in [
        (["true", "on", "yes"], true),
        (["false", "off", "no"], false),
    ] {
        if words.iter().any(|w| w.eq_ignore_ascii_case(text)) {
            return Ok(J::Bool(b));
        }
    }
    Ok(J::String(text.to_owned()))
}

/// Parses one value in directive syntax into a [`Value`], with the checks
/// Apache applies (context aside). For [`Kind::List`] the text is one
/// element; for [`Kind::KeyValue`] it is `name value`, split at the first
/// space.
pub fn parse_value(d: &'static Directive, used: &str, text: &str) -> Result<Value, Error> {
    if let Status::Removed(advice) = d.status {
        return Err(Error::new(
            used,
            format!("{used} is no longer supported: {advice}"),
        ));
    }
    Ok(match d.kind {
        Kind::Flag => Value::Flag(parse_flag(used, text)?),
        Kind::Int { .. } => Value::Int(parse_int(d, used, text)?),
        Kind::Choice(choices) => Value::Choice(choices[choice_index(choices, used, text)?].1),
        Kind::Text | Kind::Path => Value::Text(non_empty(used, text)?.to_owned()),
        Kind::List(item) => {
            check_item(item, used, text)?;
            Value::List(vec![text.to_owned()])
        }
        Kind::KeyValue => {
            let (name, value) = text.split_once(' ').unwrap_or((text, ""));
            check_ctl(used, name, value)?;
            Value::Pairs(vec![(name.to_owned(), value.to_owned())])
        }
        Kind::Ignored => Value::List(Vec::new()),
    })
}

/// Finds a directive by its name or an alias (any case).
pub fn lookup(name: &str) -> Option<&'static Directive> {
    super::table::DIRECTIVES.iter().find(|d| d.answers_to(name))
}

/// The value of a directive's `Fallback::Is` default, parsed.
pub fn default_value(id: Id) -> Option<Value> {
    let d = super::table::directive(id);
    match d.default {
        super::table::Fallback::Is(text) => parse_value(d, d.name, text).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::table::{DIRECTIVES, directive};

    fn at(section: Section) -> Site {
        Site::at(section)
    }

    fn err(id: Id, site: Site, args: &[&str]) -> String {
        let d = directive(id);
        check(d, d.name, site, args)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn numbers_are_checked_and_the_message_says_what_is_allowed() {
        let m = err(Id::MaxPoolSize, at(Section::Server), &["abc"]);
        assert_eq!(
            m,
            "PassengerMaxPoolSize must be a whole number of at least 1, not \"abc\""
        );
        let m = err(Id::MinInstances, at(Section::Server), &["-1"]);
        assert_eq!(m, "PassengerMinInstances must be at least 0, not -1");
        let m = err(Id::LogLevel, at(Section::Server), &["9"]);
        assert_eq!(m, "PassengerLogLevel must be at most 7, not 9");
        let m = err(
            Id::MaxPoolSize,
            at(Section::Server),
            &["99999999999999999999"],
        );
        assert!(m.contains("at most"), "{m}");
        assert!(err(Id::MaxPoolSize, at(Section::Server), &["6x"]).contains("whole number"));
        assert!(err(Id::MaxPoolSize, at(Section::Server), &[" 6"]).contains("whole number"));
        let d = directive(Id::ForceMaxConcurrentRequestsPerProcess);
        assert_eq!(
            check(d, d.name, at(Section::Server), &["-1"])
                .unwrap()
                .number,
            -1
        );
    }

    #[test]
    fn choices_accept_old_names_and_list_the_allowed_words() {
        let d = directive(Id::SpawnMethod);
        let m = err(Id::SpawnMethod, at(Section::Directory), &["fast"]);
        assert_eq!(
            m,
            "PassengerSpawnMethod must be smart or direct (or the old names smart-lv2, conservative), not \"fast\""
        );
        assert_eq!(
            parse_value(d, d.name, "smart-lv2").unwrap(),
            Value::Choice("smart")
        );
        assert_eq!(
            parse_value(d, d.name, "Conservative").unwrap(),
            Value::Choice("direct")
        );
        let t = directive(Id::AppType);
        assert_eq!(
            parse_value(t, t.name, "python").unwrap(),
            Value::Choice("wsgi")
        );
    }

    #[test]
    fn flags_take_on_or_off_in_any_case() {
        let d = directive(Id::Enabled);
        assert_eq!(
            check(d, d.name, at(Section::Htaccess), &["OFF"])
                .unwrap()
                .number,
            0
        );
        assert_eq!(
            check(d, d.name, at(Section::Htaccess), &["on"])
                .unwrap()
                .number,
            1
        );
        assert_eq!(
            err(Id::Enabled, at(Section::Server), &["yes"]),
            "PassengerEnabled must be On or Off, not \"yes\""
        );
    }

    #[test]
    fn contexts_follow_the_table() {
        let global_in_dir = err(Id::MaxPoolSize, at(Section::Directory), &["6"]);
        assert!(
            global_in_dir.contains("global directive"),
            "{global_in_dir}"
        );
        assert!(err(Id::DefaultUser, at(Section::Htaccess), &["x"]).contains(".htaccess"));
        let app_in_htaccess = err(Id::AppRoot, at(Section::Htaccess), &["/x"]);
        assert_eq!(
            app_in_htaccess,
            "PassengerAppRoot is not allowed in .htaccess files: it is allowed in the server config, \
             <VirtualHost>, <Directory> and <Location>"
        );
        assert!(err(Id::AppRoot, at(Section::Other), &["/x"]).contains("<Files>"));
        assert!(err(Id::Enabled, at(Section::Other), &["on"]).contains("<Files>"));
        let options = err(Id::AllowEncodedSlashes, at(Section::Htaccess), &["on"]);
        assert!(options.contains("AllowOverride Options"), "{options}");
        let d = directive(Id::AllowEncodedSlashes);
        let site = Site {
            section: Section::Htaccess,
            htaccess_options: true,
        };
        assert!(check(d, d.name, site, &["on"]).is_ok());
        for section in [Section::Server, Section::VirtualHost, Section::Directory] {
            let d = directive(Id::AppRoot);
            assert!(
                check(d, d.name, at(section), &["/x"])
                    .unwrap()
                    .warnings
                    .is_empty()
            );
        }
    }

    #[test]
    fn a_global_directive_in_a_virtual_host_warns_once_naming_it() {
        let d = directive(Id::DefaultUser);
        let checked = check(
            d,
            "RailsDefaultUser",
            at(Section::VirtualHost),
            &["www-data"],
        )
        .unwrap();
        assert_eq!(checked.warnings.len(), 1);
        assert!(
            checked.warnings[0]
                .starts_with("MP1001: RailsDefaultUser inside <VirtualHost> applies to")
        );
        assert!(
            check(d, d.name, at(Section::Server), &["www-data"])
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn enterprise_obsolete_and_removed_directives() {
        let d = directive(Id::RollingRestarts);
        let w = check(d, d.name, at(Section::Directory), &["on"])
            .unwrap()
            .warnings;
        assert!(
            w[0].starts_with("MP1002: PassengerRollingRestarts is accepted but not active yet"),
            "{w:?}"
        );
        assert!(err(Id::MemoryLimit, at(Section::Directory), &["lots"]).contains("whole number"));
        let d = directive(Id::RailsSpawnServer);
        let w = check(
            d,
            d.name,
            at(Section::Htaccess),
            &["/usr/bin/whatever", "x"],
        )
        .unwrap()
        .warnings;
        assert_eq!(
            w,
            vec!["MP1004: RailsSpawnServer is obsolete and has no effect; remove it".to_owned()]
        );
        let m = err(Id::RailsAutoDetect, at(Section::Server), &["on"]);
        assert!(
            m.starts_with("RailsAutoDetect is no longer supported: "),
            "{m}"
        );
    }

    #[test]
    fn base_uris_urls_and_ctl_values() {
        let d = directive(Id::BaseURI);
        assert!(check(d, d.name, at(Section::Server), &["/"]).is_ok());
        assert!(check(d, d.name, at(Section::Server), &["/app"]).is_ok());
        assert!(err(Id::BaseURI, at(Section::Server), &["app"]).contains("must start with"));
        assert!(err(Id::BaseURI, at(Section::Server), &["/app/"]).contains("\"/app\""));
        assert!(err(Id::PreStart, at(Section::Server), &["127.0.0.1"]).contains("http://"));
        assert!(err(Id::Ctl, at(Section::Server), &["hook", "{nope"]).contains("not valid JSON"));
        assert!(err(Id::Ctl, at(Section::Server), &["a-b", "1"]).contains("option name"));
        assert!(err(Id::AppEnv, at(Section::Server), &[""]).contains("may not be empty"));
        assert_eq!(ctl_value("12").unwrap(), serde_json::json!(12));
        assert_eq!(ctl_value("1.5").unwrap(), serde_json::json!(1.5));
        assert_eq!(ctl_value("Yes").unwrap(), serde_json::json!(true));
        assert_eq!(ctl_value("[1,2]").unwrap(), serde_json::json!([1, 2]));
        assert_eq!(ctl_value("nan").unwrap(), serde_json::json!("nan"));
        assert_eq!(
            ctl_value("/bin/hook").unwrap(),
            serde_json::json!("/bin/hook")
        );
    }

    #[test]
    fn every_example_is_valid_and_every_default_parses() {
        for d in DIRECTIVES {
            if matches!(d.status, Status::Removed(_)) {
                continue;
            }
            let args: Vec<&str> = match d.kind {
                Kind::KeyValue => d.example.splitn(2, ' ').collect(),
                _ => vec![d.example],
            };
            let site = if d.is_global() {
                at(Section::Server)
            } else {
                at(Section::Directory)
            };
            check(d, d.name, site, &args)
                .unwrap_or_else(|e| panic!("{}: bad example: {e}", d.name));
            if let crate::config::table::Fallback::Is(text) = d.default {
                parse_value(d, d.name, text)
                    .unwrap_or_else(|e| panic!("{}: bad default: {e}", d.name));
            }
        }
    }

    #[test]
    fn lookup_finds_names_and_aliases_in_any_case() {
        assert_eq!(lookup("RailsEnv").unwrap().id, Id::AppEnv);
        assert_eq!(lookup("rackbaseuri").unwrap().id, Id::BaseURI);
        assert_eq!(lookup("PassengerMaxPoolSize").unwrap().id, Id::MaxPoolSize);
        assert!(lookup("PassengerNope").is_none());
    }
}

//! Generators for everything derived from the directive table.
//!
//! `build/directives.rs` compiles this file (and `table.rs`) into the build
//! script and writes:
//!
//! - `$OUT_DIR/mp_directives.inc`: the C `command_rec` table and the field
//!   descriptors `mod_passenger/mp_config.c` creates, sets and merges with;
//! - `$OUT_DIR/mp_config_fields.rs`: the Rust that reads each C struct
//!   field (`src/ffi/config.rs` includes it);
//! - it compares `ffi/mp_config.h` (the structs, read by bindgen and the
//!   shim) and `docs/directives.md` with [`c_header`] and [`docs`]: a stale
//!   header stops the build, stale docs give a warning, and
//!   `MP_REGENERATE=1 cargo build` rewrites both. The library's tests check
//!   both files too.
//!
//! Like `table.rs`, this file uses only `std`.

use std::fmt::Write as _;

use super::table::{Context, DIRECTIVES, Directive, Fallback, Item, Kind, Override, Status};

/// The banner of every generated file (after the comment opener).
pub const BANNER: &str = "GENERATED from src/config/table.rs by src/config/codegen.rs (run by build.rs); \
do not edit. After changing the table, run `MP_REGENERATE=1 cargo build`.";

/// How the C structs store a kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// `int32_t`, `MP_UNSET` when unset: flags (0/1) and choices (an index).
    I32,
    /// `int64_t`, `MP_UNSET_INT` when unset.
    I64,
    /// `const char *`, NULL when unset.
    Str,
    /// `mp_str_list`, `items == NULL` when unset.
    List,
    /// Nothing stored.
    None,
}

fn store(kind: Kind) -> Store {
    match kind {
        Kind::Flag | Kind::Choice(_) => Store::I32,
        Kind::Int { .. } => Store::I64,
        Kind::Text | Kind::Path => Store::Str,
        Kind::List(_) | Kind::KeyValue => Store::List,
        Kind::Ignored => Store::None,
    }
}

/// How a stored field is written in the generated files.
struct FieldType {
    /// Its C type in `mp_config.h`, spaced to precede the field name.
    c: &'static str,
    /// The `Field` variant `src/ffi/config.rs` reads it as.
    rust: &'static str,
    /// Its unset value, in Rust.
    unset: &'static str,
}

/// The fields of `mp_server_config` (`global`) or of `mp_dir_config`, in
/// table order: each directive of that scope that stores a value, with the
/// type of its field.
fn struct_fields(global: bool) -> impl Iterator<Item = (&'static Directive, FieldType)> {
    DIRECTIVES
        .iter()
        .filter(move |d| d.is_global() == global && d.stores())
        .map(|d| {
            let (c, rust, unset) = match store(d.kind) {
                Store::I32 => ("int32_t ", "I32", "MP_UNSET"),
                Store::I64 => ("int64_t ", "I64", "MP_UNSET_INT"),
                Store::Str => ("const char *", "Str", "std::ptr::null()"),
                Store::List => (
                    "mp_str_list ",
                    "List",
                    "mp_str_list { items: std::ptr::null(), len: 0 }",
                ),
                Store::None => unreachable!("{} stores nothing", d.name),
            };
            (d, FieldType { c, rust, unset })
        })
}

/// `MaxPoolSize` → `MAX_POOL_SIZE`, `BaseURI` → `BASE_URI`.
fn upper_snake(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('_');
            }
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The C name of a directive's number: `MP_DIRECTIVE_MAX_POOL_SIZE`.
pub fn c_id(d: &Directive) -> String {
    format!("MP_DIRECTIVE_{}", upper_snake(&format!("{:?}", d.id)))
}

/// The value syntax, for usage messages and the docs.
pub fn syntax(kind: Kind) -> String {
    match kind {
        Kind::Flag => "On or Off".to_owned(),
        Kind::Int { min, max, unit } => {
            let range = if max >= i64::from(i32::MAX) {
                format!("an integer of at least {min}")
            } else {
                format!("an integer from {min} to {max}")
            };
            if unit.is_empty() {
                range
            } else {
                format!("{range} ({unit})")
            }
        }
        Kind::Choice(choices) => {
            let mut words: Vec<&str> = Vec::new();
            for (_, canonical) in choices {
                if !words.contains(canonical) {
                    words.push(canonical);
                }
            }
            words.join(" | ")
        }
        Kind::Text => "text".to_owned(),
        Kind::Path => "a path (relative: to ServerRoot)".to_owned(),
        Kind::List(Item::Text) => "text; repeatable".to_owned(),
        Kind::List(Item::BaseUri) => "a URI path such as /app; repeatable".to_owned(),
        Kind::List(Item::Url) => "an http:// or https:// URL; repeatable".to_owned(),
        Kind::KeyValue => "a name and a value; repeatable".to_owned(),
        Kind::Ignored => "anything (ignored)".to_owned(),
    }
}

fn default_text(d: &Directive) -> String {
    match d.default {
        Fallback::Unset => "none".to_owned(),
        Fallback::Is(v) => v.to_owned(),
        Fallback::Computed(how) => how.to_owned(),
    }
}

fn names(d: &Directive) -> String {
    if d.aliases.is_empty() {
        d.name.to_owned()
    } else {
        format!("{} ({})", d.name, d.aliases.join(", "))
    }
}

fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The contents of `ffi/mp_config.h`.
pub fn c_header() -> String {
    let mut h = String::new();
    h.push_str(&format!(
        "/*\n * The configuration structs shared by the shim and Rust, and the directive\n \
         * check that Rust exports.\n *\n * {}\n *\n",
        wrap(BANNER, 74, " * ").trim_start_matches(" * ")
    ));
    h.push_str(
        " * How values are stored (the shim creates, sets and merges these structs in\n \
         * mod_passenger/mp_config.c; Rust copies them in src/ffi/config.rs):\n \
         * - flags and choices: int32_t, MP_UNSET when unset; a flag is 0 or 1, a\n \
         *   choice is the index of the accepted word in the table's list;\n \
         * - integers: int64_t, MP_UNSET_INT when unset;\n \
         * - text and paths: NUL-terminated strings allocated from an APR pool\n \
         *   (pconf, or the request pool for .htaccess), NULL when unset; relative\n \
         *   paths are already made absolute against ServerRoot;\n \
         * - repeatable directives: mp_str_list, items == NULL when unset.\n \
         * A merge takes the child's value when it is set, else the parent's; a\n \
         * child's list replaces the parent's. Unset values get their defaults in\n \
         * Rust, from the table.\n \
         */\n#ifndef MP_CONFIG_H\n#define MP_CONFIG_H\n\n#include <stddef.h>\n#include <stdint.h>\n\n",
    );
    h.push_str(
        "/* The unset value of int32_t fields. */\n#define MP_UNSET (-1)\n\
         /* The unset value of int64_t fields (INT64_MIN). */\n#define MP_UNSET_INT (-9223372036854775807LL - 1)\n\n\
         /* A list of strings allocated from an APR pool; items == NULL (len 0) when\n \
         * unset. For PassengerCtl the items alternate: name, value, name, value. */\n\
         typedef struct mp_str_list {\n    const char *const *items;\n    uint32_t len;\n} mp_str_list;\n\n",
    );
    h.push_str(
        "/* Where a directive appears: mp_directive_check's `section`. */\n\
         #define MP_SECTION_SERVER 0    /* the main server config, outside any section */\n\
         #define MP_SECTION_VHOST 1     /* <VirtualHost>, outside directory sections */\n\
         #define MP_SECTION_DIR 2       /* <Directory>, <Location> and their Match forms */\n\
         #define MP_SECTION_OTHER 3     /* <Files>, <If>, <Limit>, <Proxy> and their variants */\n\
         #define MP_SECTION_HTACCESS 4  /* an .htaccess file */\n\n\
         /* mp_directive_check's `flags`: in .htaccess, AllowOverride grants Options\n \
         * (or AllowOverrideList names the directive). */\n\
         #define MP_SITE_HTACCESS_OPTIONS 1\n\n",
    );
    h.push_str("/* Every directive's number (its row in the table); the command table passes\n * it to the setters. */\n");
    for d in DIRECTIVES {
        h.push_str(&format!("#define {} {}\n", c_id(d), d.id as usize));
    }
    h.push_str(&format!(
        "#define MP_DIRECTIVE_COUNT {}\n\n",
        DIRECTIVES.len()
    ));

    for (global, name, what) in [
        (
            true,
            "mp_server_config",
            "Server-wide (global) directives: one per server, all vhosts share the main server's values.",
        ),
        (
            false,
            "mp_dir_config",
            "Per-directory (application and location) directives, merged by Apache per request.",
        ),
    ] {
        h.push_str(&format!("/* {what} */\ntypedef struct {name} {{\n"));
        for (d, ty) in struct_fields(global) {
            let choices = match d.kind {
                Kind::Choice(list) => {
                    let words: Vec<String> = list
                        .iter()
                        .enumerate()
                        .map(|(i, (w, _))| format!("{i} {w}"))
                        .collect();
                    format!("; index: {}", words.join(", "))
                }
                _ => String::new(),
            };
            h.push_str(&format!(
                "    /* {}: {}{}; default: {} */\n    {}{};\n",
                names(d),
                syntax(d.kind),
                choices,
                default_text(d),
                ty.c,
                d.field
            ));
        }
        h.push_str(&format!("}} {name};\n\n"));
    }

    h.push_str(
        "/* What mp_directive_check decided. */\n\
         typedef enum mp_directive_verdict {\n    \
         MP_DIRECTIVE_OK = 0,    /* store the value */\n    \
         MP_DIRECTIVE_WARN = 1,  /* store the value, and log msg (a tagged warning) */\n    \
         MP_DIRECTIVE_REFUSE = 2 /* refuse the directive: msg is Apache's error message */\n\
         } mp_directive_verdict;\n\n",
    );
    h.push_str(
        "/*\n * Checks one use of a directive, when Apache parses it: the place (`section`,\n \
         * `flags`) against the directive's context, and the arguments against its\n \
         * type and bounds. The table's rules live in Rust only.\n *\n \
         * id:      MP_DIRECTIVE_*, from the command's cmd_data.\n \
         * name:    the name as written (an alias, maybe), for messages.\n \
         * arg1/2:  the arguments (arg2 only for PassengerCtl; NULL otherwise).\n \
         * number:  on OK/WARN, what to store for flags (0/1), choices (the index)\n \
         *          and integers; untouched for other kinds. Must not be NULL.\n \
         * msg:     on WARN and REFUSE, a NUL-terminated message (truncated to\n \
         *          msglen bytes); on OK, an empty string. Must not be NULL.\n *\n \
         * All pointers are borrowed for the call. Never unwinds: a NULL pointer\n \
         * or a bug gives REFUSE with a message. Thread: any (.htaccess files are\n \
         * parsed by worker threads).\n */\n\
         mp_directive_verdict mp_directive_check(uint32_t id, const char *name, uint32_t section,\n                                         \
         uint32_t flags, const char *arg1, const char *arg2,\n                                         \
         int64_t *number, char *msg, size_t msglen);\n\n#endif /* MP_CONFIG_H */\n",
    );
    h
}

/// Word-wraps `text` to `width` columns, each line starting with `prefix`.
fn wrap(text: &str, width: usize, prefix: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(prefix);
    for word in text.split_whitespace() {
        if line.len() > prefix.len() && line.len() + 1 + word.len() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(prefix);
        }
        if line.len() > prefix.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}

/// The contents of `$OUT_DIR/mp_directives.inc`, which `mp_config.c`
/// includes after declaring `mp_field`, `MP_STORE_*` and the setters.
pub fn c_directives() -> String {
    let mut c = format!(
        "/* {BANNER} */\n\n/* Where each directive's value lives, by directive number. */\n"
    );
    c.push_str("static const mp_field mp_fields[MP_DIRECTIVE_COUNT] = {\n");
    for d in DIRECTIVES {
        let (st, owner) = match store(d.kind) {
            Store::I32 => ("MP_STORE_I32", true),
            Store::I64 => ("MP_STORE_I64", true),
            Store::Str => ("MP_STORE_STR", true),
            Store::List => ("MP_STORE_LIST", true),
            Store::None => ("MP_STORE_NONE", false),
        };
        let offset = if owner {
            format!(
                "offsetof({}, {})",
                if d.is_global() {
                    "mp_server_config"
                } else {
                    "mp_dir_config"
                },
                d.field
            )
        } else {
            "0".to_owned()
        };
        let _ = writeln!(
            c,
            "    {{{}, {st}, {}, {}, {offset}}},",
            c_id(d),
            u8::from(d.is_global()),
            u8::from(d.kind == Kind::Path)
        );
    }
    c.push_str("};\n\n/* The directive table: every name and alias; all checks are in Rust. */\n");
    c.push_str("const command_rec mp_commands[] = {\n");
    for d in DIRECTIVES {
        let (init, setter) = match d.kind {
            Kind::KeyValue => ("AP_INIT_TAKE2", "mp_set_take2"),
            Kind::Ignored => ("AP_INIT_RAW_ARGS", "mp_set_raw_args"),
            _ => ("AP_INIT_TAKE1", "mp_set_take1"),
        };
        let usage = match d.status {
            Status::Obsolete => "obsolete; ignored".to_owned(),
            Status::Removed(advice) => format!("no longer supported: {advice}"),
            _ => format!("{} (default: {})", syntax(d.kind), default_text(d)),
        };
        for name in std::iter::once(&d.name).chain(d.aliases) {
            let _ = writeln!(
                c,
                "    {init}({}, {setter}, (void *)&mp_fields[{}], MP_CMD_WHERE,\n                  {}),",
                c_string(name),
                c_id(d),
                c_string(&usage)
            );
        }
    }
    c.push_str("    {NULL}\n};\n");
    c
}

/// The contents of `$OUT_DIR/mp_config_fields.rs`, included by
/// `src/ffi/config.rs`, which defines `Field` and imports the bindgen
/// structs and `Id`.
pub fn rust_fields() -> String {
    let mut r = format!("// {BANNER}\n\n");
    for (global, func, ty) in [
        (true, "visit_server_fields", "mp_server_config"),
        (false, "visit_dir_fields", "mp_dir_config"),
    ] {
        let _ = writeln!(
            r,
            "/// Calls `f` with every field of a `{ty}`, in table order.\n\
             fn {func}(c: &{ty}, f: &mut impl FnMut(Id, Field)) {{"
        );
        for (d, ty) in struct_fields(global) {
            let _ = writeln!(
                r,
                "    f(Id::{:?}, Field::{}(c.{}));",
                d.id, ty.rust, d.field
            );
        }
        r.push_str("}\n\n");
    }
    for (global, func, ty) in [
        (true, "unset_server_config", "mp_server_config"),
        (false, "unset_dir_config", "mp_dir_config"),
    ] {
        let _ = writeln!(
            r,
            "/// A `{ty}` with every field unset, as the shim creates it. The struct\n\
             /// literal names every field, so it only compiles while the header's\n\
             /// fields are exactly the table's.\n\
             #[allow(dead_code)]\n\
             fn {func}() -> {ty} {{\n    {ty} {{"
        );
        for (d, ty) in struct_fields(global) {
            let _ = writeln!(r, "        {}: {},", d.field, ty.unset);
        }
        r.push_str("    }\n}\n\n");
    }
    r
}

fn context_text(d: &Directive) -> &'static str {
    match d.context {
        Context::Global => {
            "server config (global; inside `<VirtualHost>` it still applies server-wide, with a warning)"
        }
        Context::App => "server config, `<VirtualHost>`, `<Directory>`, `<Location>`",
        Context::Location(Override::All) => {
            "server config, `<VirtualHost>`, `<Directory>`, `<Location>`, `.htaccess` (any `AllowOverride`)"
        }
        Context::Location(Override::Options) => {
            "server config, `<VirtualHost>`, `<Directory>`, `<Location>`, `.htaccess` (`AllowOverride Options`)"
        }
        Context::Anywhere => "anywhere, `.htaccess` included",
    }
}

fn status_text(d: &Directive) -> Option<String> {
    match d.status {
        Status::Active => None,
        Status::NoEffect => {
            Some("accepted, but has no effect in mod_passenger (logged at startup)".to_owned())
        }
        Status::Enterprise => Some(
            "Enterprise-only in Phusion Passenger; accepted and stored, but not active yet \
             (logged at startup)"
                .to_owned(),
        ),
        Status::Obsolete => Some("obsolete: ignored, with a warning".to_owned()),
        Status::Removed(advice) => Some(format!("removed: Apache refuses to start; {advice}")),
    }
}

/// The contents of `docs/directives.md`.
pub fn docs() -> String {
    let mut m = format!(
        "<!-- {BANNER} -->\n\n# Directive reference\n\n\
         Every `Passenger*` directive mod_passenger accepts, with its aliases, where it may \
         appear, its value and its default. Directive names and values are matched in any case.\n\n\
         Apache checks every value when it reads the configuration: a bad value, or a directive \
         in the wrong place, makes `apache2ctl configtest` fail with a message that names the \
         directive and what is allowed. Per-directory values are merged the Apache way: a \
         `<Directory>` or `<Location>` value overrides the one it inherits; a repeatable \
         directive's list replaces the inherited list. Warnings carry a tag: `MP1001` global \
         directive inside `<VirtualHost>`, `MP1002` not active yet, `MP1003` no effect, \
         `MP1004` obsolete.\n\n"
    );
    type Member = fn(&Directive) -> bool;
    let groups: [(&str, Member); 5] = [
        ("Global directives", |d| {
            d.is_global() && !matches!(d.status, Status::Enterprise)
        }),
        ("Per-application directives", |d| {
            d.context == Context::App && !matches!(d.status, Status::Enterprise)
        }),
        ("Per-location directives (.htaccess capable)", |d| {
            matches!(d.context, Context::Location(_)) && !matches!(d.status, Status::Enterprise)
        }),
        ("Enterprise directives (accepted, not active yet)", |d| {
            matches!(d.status, Status::Enterprise)
        }),
        ("Obsolete and removed directives", |d| {
            d.context == Context::Anywhere
        }),
    ];
    for (title, member) in groups {
        let _ = writeln!(m, "## {title}\n");
        for d in DIRECTIVES.iter().filter(|d| member(d)) {
            let _ = writeln!(m, "### {}\n", d.name);
            if !d.aliases.is_empty() {
                let aliases: Vec<String> = d.aliases.iter().map(|a| format!("`{a}`")).collect();
                let _ = writeln!(m, "- Aliases: {}", aliases.join(", "));
            }
            let _ = writeln!(m, "- Context: {}", context_text(d));
            if d.stores() {
                let _ = writeln!(m, "- Value: {}", syntax(d.kind));
                let default = match d.default {
                    Fallback::Is(v) => format!("`{v}`"),
                    _ => default_text(d),
                };
                let _ = writeln!(m, "- Default: {default}");
            }
            if let Some(status) = status_text(d) {
                let _ = writeln!(m, "- Status: {status}");
            }
            if d.stores() {
                let _ = writeln!(m, "- Example: `{} {}`", d.name, d.example_args());
            }
            let _ = writeln!(m, "\n{}\n", d.doc);
        }
    }
    m.truncate(m.trim_end().len());
    m.push('\n');
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repo_file(path: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The FFI header bindgen and the shim read is the one the table gives.
    #[test]
    fn ffi_header_is_generated_from_the_table() {
        assert!(
            repo_file("ffi/mp_config.h") == c_header(),
            "ffi/mp_config.h is stale: run `MP_REGENERATE=1 cargo build`"
        );
    }

    #[test]
    fn directive_docs_are_generated_from_the_table() {
        assert!(
            repo_file("docs/directives.md") == docs(),
            "docs/directives.md is stale: run `MP_REGENERATE=1 cargo build`"
        );
    }

    /// The generated C registers every name and alias once, with the setter
    /// for its arity; the generated Rust reads every stored field.
    #[test]
    fn generated_c_and_rust_cover_every_directive() {
        let c = c_directives();
        let r = rust_fields();
        for d in DIRECTIVES {
            for name in std::iter::once(&d.name).chain(d.aliases) {
                assert_eq!(c.matches(&format!("(\"{name}\",")).count(), 1, "{name}");
            }
            if d.stores() {
                assert!(r.contains(&format!("c.{})", d.field)), "{}", d.name);
                assert!(c.contains(&format!(
                    "offsetof({}, {})",
                    if d.is_global() {
                        "mp_server_config"
                    } else {
                        "mp_dir_config"
                    },
                    d.field
                )));
            }
        }
        assert!(c.contains("AP_INIT_TAKE2(\"PassengerCtl\", mp_set_take2"));
        assert!(c.contains("AP_INIT_RAW_ARGS(\"RailsSpawnServer\", mp_set_raw_args"));
    }

    #[test]
    fn c_names_are_upper_snake_case() {
        assert_eq!(upper_snake("MaxPoolSize"), "MAX_POOL_SIZE");
        assert_eq!(upper_snake("BaseURI"), "BASE_URI");
        assert_eq!(upper_snake("AdminPanelUrl"), "ADMIN_PANEL_URL");
    }
}

//! The C config structs (`ffi/mp_config.h`), read from Rust, and the
//! directive check the shim calls while Apache parses the configuration.
//!
//! This is the only place that reads `mp_server_config`/`mp_dir_config`
//! through raw pointers. Which fields exist and what they hold comes from the
//! directive table: `$OUT_DIR/mp_config_fields.rs` (generated, included
//! below) calls a visitor with each field and its directive [`Id`]; the code
//! here turns each set field into a [`Value`], copying strings (G4: nothing
//! borrowed from C is kept).
//!
//! [`dir_config_from_ffi`] runs on every request: it allocates only for the
//! directives that are set.

use std::ffi::CStr;
use std::os::raw::c_char;

use super::{
    MP_SECTION_DIR, MP_SECTION_HTACCESS, MP_SECTION_OTHER, MP_SECTION_SERVER, MP_SECTION_VHOST,
    MP_SITE_HTACCESS_OPTIONS, MP_UNSET, MP_UNSET_INT, mp_dir_config, mp_directive_verdict,
    mp_directive_verdict_MP_DIRECTIVE_OK, mp_directive_verdict_MP_DIRECTIVE_REFUSE,
    mp_directive_verdict_MP_DIRECTIVE_WARN, mp_server_config, mp_str_list,
};
use crate::config::table::{self, DIRECTIVES, Id, Kind};
use crate::config::value::{self, Section, Site, Value};
use crate::config::{DirConfig, Error, ServerConfig};

/// One field of a C config struct, as stored (see `ffi/mp_config.h`).
enum Field {
    /// Flags and choices; `MP_UNSET` when unset.
    I32(i32),
    /// Integers; `MP_UNSET_INT` when unset.
    I64(i64),
    /// Text and paths; NULL when unset.
    Str(*const c_char),
    /// Repeatable directives; `items` NULL when unset.
    List(mp_str_list),
}

include!(concat!(env!("OUT_DIR"), "/mp_config_fields.rs"));

// The header and the table are generated together; check the count too.
const _: () = assert!(super::MP_DIRECTIVE_COUNT as usize == DIRECTIVES.len());

/// Copies a NUL-terminated C string, refusing bad UTF-8.
///
/// # Safety
/// `p` is non-NULL and points to a NUL-terminated string valid for the call.
unsafe fn text(id: Id, p: *const c_char) -> Result<String, Error> {
    // SAFETY: non-NULL and NUL-terminated, per this function's contract.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => {
            let name = table::directive(id).name;
            Err(Error::new(
                name,
                format!("{name}: the value is not valid UTF-8"),
            ))
        }
    }
}

/// Turns one stored field into a value; `None` when unset.
///
/// # Safety
/// Strings and list items in `field` are NULL or valid NUL-terminated strings,
/// and a list's `items` points to `len` of them, all valid for the call.
unsafe fn field_value(id: Id, field: Field) -> Result<Option<Value>, Error> {
    let d = table::directive(id);
    let corrupt = || {
        let name = d.name;
        Error::new(
            name,
            format!("{name}: the stored value is out of range (a bug)"),
        )
    };
    Ok(Some(match (field, d.kind) {
        (Field::I32(MP_UNSET), _) | (Field::I64(MP_UNSET_INT), _) => return Ok(None),
        (Field::I32(v), Kind::Flag) => Value::Flag(v != 0),
        (Field::I32(i), Kind::Choice(choices)) => {
            let (_, canonical) = usize::try_from(i)
                .ok()
                .and_then(|i| choices.get(i))
                .ok_or_else(corrupt)?;
            Value::Choice(canonical)
        }
        (Field::I64(n), Kind::Int { min, max, .. }) if (min..=max).contains(&n) => Value::Int(n),
        (Field::Str(p), _) if p.is_null() => return Ok(None),
        // SAFETY: non-NULL, and valid for the call per this function's contract.
        (Field::Str(p), _) => Value::Text(unsafe { text(id, p) }?),
        (Field::List(list), _) if list.items.is_null() || list.len == 0 => return Ok(None),
        (Field::List(list), kind) => {
            // SAFETY: `items` points to `len` string pointers (contract).
            let items = unsafe { std::slice::from_raw_parts(list.items, list.len as usize) };
            let mut texts = Vec::with_capacity(items.len());
            for &item in items {
                if item.is_null() {
                    return Err(corrupt());
                }
                // SAFETY: non-NULL, valid for the call (contract).
                texts.push(unsafe { text(id, item) }?);
            }
            if kind == Kind::KeyValue {
                if texts.len() % 2 != 0 {
                    return Err(corrupt());
                }
                let mut pairs = Vec::with_capacity(texts.len() / 2);
                let mut it = texts.into_iter();
                while let (Some(name), Some(value)) = (it.next(), it.next()) {
                    pairs.push((name, value));
                }
                Value::Pairs(pairs)
            } else {
                Value::List(texts)
            }
        }
        _ => return Err(corrupt()),
    }))
}

/// Copies the merged per-directory config of a request.
///
/// # Safety
/// `p` is a valid `mp_dir_config` (as created and merged by the shim) whose
/// strings and lists stay valid and unchanged for the call.
pub unsafe fn dir_config_from_ffi(p: &mp_dir_config) -> Result<DirConfig, Error> {
    let mut config = DirConfig::new();
    let mut result = Ok(());
    visit_dir_fields(p, &mut |id, field| {
        if result.is_err() {
            return;
        }
        // SAFETY: the fields come from `p`, valid for the call (contract).
        match unsafe { field_value(id, field) } {
            Ok(Some(value)) => config.push(id, value),
            Ok(None) => {}
            Err(e) => result = Err(e),
        }
    });
    result.map(|()| config)
}

/// Copies the server-wide config, applying the table's defaults to what is unset.
///
/// # Safety
/// `p` is a valid `mp_server_config` (as created by the shim) whose strings
/// and lists stay valid and unchanged for the call.
pub unsafe fn server_config_from_ffi(p: &mp_server_config) -> Result<ServerConfig, Error> {
    let mut config = ServerConfig::default();
    let mut result = Ok(());
    visit_server_fields(p, &mut |id, field| {
        if result.is_err() {
            return;
        }
        // SAFETY: the fields come from `p`, valid for the call (contract).
        result = match unsafe { field_value(id, field) } {
            Ok(Some(value)) => config.apply(id, value),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
    });
    result.map(|()| config)
}

/// Copies a C string argument for [`mp_directive_check`].
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn arg<'a>(name: &str, p: *const c_char) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated (contract).
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    std::str::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::new(name, format!("{name}: the value is not valid UTF-8")))
}

/// The checks behind [`mp_directive_check`], on Rust types.
fn check(
    id: u32,
    name: &str,
    section: u32,
    flags: u32,
    args: &[&str],
) -> Result<value::Checked, Error> {
    let d = DIRECTIVES.get(id as usize).ok_or_else(|| {
        Error::new(
            name,
            format!("{name}: unknown directive number {id} (a bug)"),
        )
    })?;
    let section = match section {
        MP_SECTION_SERVER => Section::Server,
        MP_SECTION_VHOST => Section::VirtualHost,
        MP_SECTION_DIR => Section::Directory,
        MP_SECTION_OTHER => Section::Other,
        MP_SECTION_HTACCESS => Section::Htaccess,
        other => {
            return Err(Error::new(
                name,
                format!("{name}: unknown section {other} (a bug)"),
            ));
        }
    };
    let site = Site {
        section,
        htaccess_options: flags & MP_SITE_HTACCESS_OPTIONS != 0,
    };
    value::check(d, name, site, args)
}

/// Checks one use of a directive while Apache parses the configuration.
/// See `ffi/mp_config.h` for the contract: on OK/WARN `*number` is what to
/// store for flags, choices and integers, and `msg` holds the warnings (one
/// per line) or the refusal. Never unwinds; NULL pointers and panics give
/// `MP_DIRECTIVE_REFUSE`.
///
/// # Safety
/// `name`, `arg1` and `arg2` are NULL or NUL-terminated strings valid for the
/// call; `number` is NULL or writable; `msg` is NULL or has `msglen` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mp_directive_check(
    id: u32,
    name: *const c_char,
    section: u32,
    flags: u32,
    arg1: *const c_char,
    arg2: *const c_char,
    number: *mut i64,
    msg: *mut c_char,
    msglen: usize,
) -> mp_directive_verdict {
    let outcome = std::panic::catch_unwind(|| -> Result<(i64, String), Error> {
        // SAFETY: NULL or valid for the call (contract).
        let name = unsafe { arg("directive", name) }?.unwrap_or("(unnamed directive)");
        // SAFETY: as above.
        let first = unsafe { arg(name, arg1) }?.unwrap_or("");
        // SAFETY: as above.
        let second = unsafe { arg(name, arg2) }?;
        let args: &[&str] = match &second {
            Some(second) => &[first, second],
            None => &[first],
        };
        let checked = check(id, name, section, flags, args)?;
        Ok((checked.number, checked.warnings.join("\n")))
    });
    let (verdict, text) = match outcome {
        Ok(Ok((value, warnings))) => {
            if number.is_null() {
                (
                    mp_directive_verdict_MP_DIRECTIVE_REFUSE,
                    "mp_directive_check: NULL number (a bug)".to_owned(),
                )
            } else {
                // SAFETY: non-NULL and writable (contract).
                unsafe { *number = value };
                if warnings.is_empty() {
                    (mp_directive_verdict_MP_DIRECTIVE_OK, warnings)
                } else {
                    (mp_directive_verdict_MP_DIRECTIVE_WARN, warnings)
                }
            }
        }
        Ok(Err(e)) => (mp_directive_verdict_MP_DIRECTIVE_REFUSE, e.to_string()),
        Err(payload) => {
            super::boundary::log_panic(payload);
            (
                mp_directive_verdict_MP_DIRECTIVE_REFUSE,
                "internal error in mod_passenger while checking this directive (a bug)".to_owned(),
            )
        }
    };
    // SAFETY: msg is NULL or has msglen writable bytes (contract).
    unsafe { super::boundary::write_message(msg, msglen, &text) };
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::ptr;

    fn blank_dir() -> mp_dir_config {
        unset_dir_config()
    }

    #[test]
    fn an_unset_dir_config_reads_as_empty() {
        let c = blank_dir();
        // SAFETY: all strings NULL, lists empty.
        let dir = unsafe { dir_config_from_ffi(&c) }.unwrap();
        assert_eq!(dir, DirConfig::new());
    }

    #[test]
    fn set_fields_are_copied_and_decoded() {
        let root = CString::new("/srv/app").unwrap();
        let uris = [
            CString::new("/b").unwrap(),
            CString::new("/").unwrap(),
            CString::new("/a").unwrap(),
        ];
        let uri_ptrs: Vec<*const c_char> = uris.iter().map(|u| u.as_ptr()).collect();
        let mut c = blank_dir();
        c.app_root = root.as_ptr();
        c.enabled = 0;
        c.spawn_method = 3; // "conservative"
        c.min_instances = 2;
        c.base_uris = mp_str_list {
            items: uri_ptrs.as_ptr(),
            len: 3,
        };
        // SAFETY: every pointer set above outlives the call.
        let dir = unsafe { dir_config_from_ffi(&c) }.unwrap();
        assert_eq!(dir.app_root(), Some("/srv/app"));
        assert!(!dir.enabled());
        assert_eq!(dir.base_uris(), ["/a", "/b"]);
        assert_eq!(
            dir.option_pairs(),
            vec![
                ("PassengerAppRoot", "/srv/app".to_owned()),
                ("PassengerMinInstances", "2".to_owned()),
                ("PassengerSpawnMethod", "direct".to_owned()),
            ]
        );
        c.min_instances = -5; // below the table's bound: not something the shim stores
        // SAFETY: as above.
        assert!(unsafe { dir_config_from_ffi(&c) }.is_err());
    }

    #[test]
    fn server_config_reads_fields_and_applies_defaults() {
        let mut c = unset_server_config();
        c.max_pool_size = 12;
        c.user_switching = 0;
        let items = [
            CString::new("hook_x").unwrap(),
            CString::new("[1]").unwrap(),
        ];
        let ptrs: Vec<*const c_char> = items.iter().map(|i| i.as_ptr()).collect();
        c.ctl = mp_str_list {
            items: ptrs.as_ptr(),
            len: 2,
        };
        // SAFETY: pointers valid for the call.
        let s = unsafe { server_config_from_ffi(&c) }.unwrap();
        assert_eq!(s.max_pool_size, 12);
        assert!(!s.user_switching);
        assert_eq!(s.pool_idle_time, 300);
        assert_eq!(s.default_user, "nobody");
        assert_eq!(s.ctl, vec![("hook_x".to_owned(), serde_json::json!([1]))]);
    }

    fn call(
        id: Id,
        name: &str,
        section: u32,
        flags: u32,
        a1: Option<&str>,
        a2: Option<&str>,
    ) -> (mp_directive_verdict, i64, String) {
        let name = CString::new(name).unwrap();
        let a1 = a1.map(|a| CString::new(a).unwrap());
        let a2 = a2.map(|a| CString::new(a).unwrap());
        let mut number = 77;
        let mut msg = [0 as c_char; 256];
        // SAFETY: every pointer is valid for the call; msg has 256 bytes.
        let v = unsafe {
            mp_directive_check(
                id as u32,
                name.as_ptr(),
                section,
                flags,
                a1.as_ref().map_or(ptr::null(), |a| a.as_ptr()),
                a2.as_ref().map_or(ptr::null(), |a| a.as_ptr()),
                &raw mut number,
                msg.as_mut_ptr(),
                msg.len(),
            )
        };
        // SAFETY: mp_directive_check always NUL-terminates msg.
        let text = unsafe { CStr::from_ptr(msg.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        (v, number, text)
    }

    #[test]
    fn the_export_checks_values_and_places() {
        let (v, n, m) = call(
            Id::MaxPoolSize,
            "RailsMaxPoolSize",
            MP_SECTION_SERVER,
            0,
            Some("8"),
            None,
        );
        assert_eq!(
            (v, n, m.as_str()),
            (mp_directive_verdict_MP_DIRECTIVE_OK, 8, "")
        );
        let (v, _, m) = call(
            Id::MaxPoolSize,
            "PassengerMaxPoolSize",
            MP_SECTION_SERVER,
            0,
            Some("abc"),
            None,
        );
        assert_eq!(v, mp_directive_verdict_MP_DIRECTIVE_REFUSE);
        assert!(
            m.contains("PassengerMaxPoolSize must be a whole number"),
            "{m}"
        );
        let (v, _, m) = call(
            Id::DefaultUser,
            "PassengerDefaultUser",
            MP_SECTION_VHOST,
            0,
            Some("www-data"),
            None,
        );
        assert_eq!(v, mp_directive_verdict_MP_DIRECTIVE_WARN);
        assert!(m.starts_with("MP1001: "), "{m}");
        let (v, n, _) = call(
            Id::SpawnMethod,
            "PassengerSpawnMethod",
            MP_SECTION_DIR,
            0,
            Some("conservative"),
            None,
        );
        assert_eq!((v, n), (mp_directive_verdict_MP_DIRECTIVE_OK, 3));
        let (v, _, _) = call(
            Id::AllowEncodedSlashes,
            "PassengerAllowEncodedSlashes",
            MP_SECTION_HTACCESS,
            0,
            Some("on"),
            None,
        );
        assert_eq!(v, mp_directive_verdict_MP_DIRECTIVE_REFUSE);
        let (v, n, _) = call(
            Id::AllowEncodedSlashes,
            "PassengerAllowEncodedSlashes",
            MP_SECTION_HTACCESS,
            MP_SITE_HTACCESS_OPTIONS,
            Some("on"),
            None,
        );
        assert_eq!((v, n), (mp_directive_verdict_MP_DIRECTIVE_OK, 1));
        let (v, _, m) = call(
            Id::Ctl,
            "PassengerCtl",
            MP_SECTION_SERVER,
            0,
            Some("a"),
            Some("{x"),
        );
        assert_eq!(v, mp_directive_verdict_MP_DIRECTIVE_REFUSE);
        assert!(m.contains("JSON"), "{m}");
        let (v, _, m) = call(Id::MaxPoolSize, "X", 99, 0, Some("1"), None);
        assert_eq!(v, mp_directive_verdict_MP_DIRECTIVE_REFUSE);
        assert!(m.contains("bug"));
    }

    #[test]
    fn null_pointers_are_refused_not_dereferenced() {
        let mut msg = [0 as c_char; 64];
        // SAFETY: NULL name/args are allowed; number NULL is refused.
        let v = unsafe {
            mp_directive_check(
                0,
                ptr::null(),
                0,
                0,
                ptr::null(),
                ptr::null(),
                ptr::null_mut(),
                msg.as_mut_ptr(),
                64,
            )
        };
        assert_eq!(v, mp_directive_verdict_MP_DIRECTIVE_REFUSE);
        // SAFETY: NULL msg is allowed: nothing is written.
        let v = unsafe {
            mp_directive_check(
                0,
                ptr::null(),
                0,
                0,
                ptr::null(),
                ptr::null(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        assert_eq!(v, mp_directive_verdict_MP_DIRECTIVE_REFUSE);
    }
}

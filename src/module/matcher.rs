//! Does a request belong to an application, and to which one?
//!
//! Runs in the fixups phase for every request in a location where
//! `PassengerEnabled` is on. The rules follow the original (reference §2.2)
//! with one deliberate change: when several `PassengerBaseURI` values
//! match, the longest wins (the original takes the lexicographically first,
//! so `/app` would shadow `/app/admin`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{AppType, DirConfig};

/// What the matcher needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct MatchInput<'a> {
    /// The decoded request path (`r->uri`).
    pub uri: &'a [u8],
    /// The file Apache mapped the path to, before core shortened it.
    pub filename: &'a [u8],
    /// The vhost's DocumentRoot.
    pub document_root: &'a [u8],
}

/// A request that belongs to an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The application's root directory.
    pub app_root: PathBuf,
    /// Its type, configured or detected.
    pub app_type: AppType,
    /// The startup file, relative to the app root.
    pub startup_file: String,
    /// The matching `PassengerBaseURI`, if the app lives under a sub-URI.
    pub base_uri: Option<String>,
}

/// Why a request that looked like ours cannot be served.
#[derive(Debug)]
pub struct MatchError(pub String);

/// Decides whether the request belongs to an app. `Ok(None)` means Apache
/// should serve it (disabled, a static file, or no app found).
pub fn match_request(dir: &DirConfig, input: &MatchInput) -> Result<Option<Match>, MatchError> {
    if !dir.enabled() {
        return Ok(None);
    }
    let docroot = trim_trailing_slash(input.document_root);
    if docroot.is_empty() {
        return Err(MatchError(
            "cannot determine the document root of the virtual host".into(),
        ));
    }
    // Static files are Apache's.
    if !input.filename.is_empty() && is_regular_file(bytes_path(input.filename)) {
        return Ok(None);
    }
    let base_uri = longest_base_uri(dir.base_uris(), input.uri);

    if dir.app_start_command().is_some() {
        let app_root = match dir.app_root() {
            Some(root) => PathBuf::from(root),
            None => parent_of(bytes_path(docroot)),
        };
        return Ok(Some(Match {
            app_root,
            app_type: AppType::Generic,
            startup_file: String::new(),
            base_uri: base_uri.map(str::to_owned),
        }));
    }

    let app_root = match (dir.app_root(), dir.app_type()) {
        (Some(root), _) => PathBuf::from(root),
        (None, Some(_)) => return Ok(None), // as the original: a type needs a root
        (None, None) => {
            let mut public = bytes_path(docroot).to_path_buf();
            if let Some(base) = base_uri {
                public = bytes_path(&[docroot, base.as_bytes()].concat()).to_path_buf();
                if !public.exists() {
                    return Ok(None);
                }
                public = resolve_one_symlink(&public);
            }
            parent_of(&public)
        }
    };

    let detected = match dir.app_type() {
        Some(app_type) => Some((
            app_type,
            dir.startup_file()
                .unwrap_or(app_type.default_startup_file())
                .to_owned(),
        )),
        None => detect_throttled(&app_root, dir.startup_file(), super::stat_throttle())?,
    };
    Ok(detected.map(|(app_type, startup_file)| Match {
        app_root,
        app_type,
        startup_file,
        base_uri: base_uri.map(str::to_owned),
    }))
}

/// The longest configured base URI that is the request path or a prefix of
/// it ending at a `/`.
pub fn longest_base_uri<'a>(base_uris: &'a [String], uri: &[u8]) -> Option<&'a str> {
    base_uris
        .iter()
        .filter(|base| {
            let base = base.as_bytes();
            base != b"/"
                && uri.starts_with(base)
                && (uri.len() == base.len() || uri[base.len()] == b'/')
        })
        .max_by_key(|base| base.len())
        .map(String::as_str)
}

/// Finds the app type from the files in `app_root`.
/// What autodetection found in an app root, and when.
struct Detected {
    /// The `PassengerStartupFile` the detection was made for.
    startup_file: Option<String>,
    at: Instant,
    found: Option<(AppType, String)>,
}

/// The most app roots one Apache thread remembers; past it, it starts over.
const DETECTED_MAX: usize = 256;

thread_local! {
    /// Autodetection results of this Apache thread, by app root.
    static DETECTED: RefCell<HashMap<PathBuf, Detected>> = RefCell::new(HashMap::new());
}

/// [`detect`], reusing a result younger than `throttle`
/// (PassengerStatThrottleRate), as the original does: a busy app then
/// costs no file check per request. Errors are never kept.
fn detect_throttled(
    app_root: &Path,
    startup_file: Option<&str>,
    throttle: Duration,
) -> Result<Option<(AppType, String)>, MatchError> {
    if throttle.is_zero() {
        return detect(app_root, startup_file);
    }
    let now = Instant::now();
    let kept = DETECTED.with_borrow(|cache| {
        cache
            .get(app_root)
            .filter(|d| d.startup_file.as_deref() == startup_file && now - d.at < throttle)
            .map(|d| d.found.clone())
    });
    if let Some(found) = kept {
        return Ok(found);
    }
    let found = detect(app_root, startup_file)?;
    DETECTED.with_borrow_mut(|cache| {
        if cache.len() >= DETECTED_MAX {
            cache.clear();
        }
        cache.insert(
            app_root.to_path_buf(),
            Detected {
                startup_file: startup_file.map(str::to_owned),
                at: now,
                found: found.clone(),
            },
        );
    });
    Ok(found)
}

fn detect(
    app_root: &Path,
    startup_file: Option<&str>,
) -> Result<Option<(AppType, String)>, MatchError> {
    if let Some(file) = startup_file {
        let app_type = match Path::new(file).extension().and_then(|e| e.to_str()) {
            Some("py") => AppType::Wsgi,
            Some("ru") => AppType::Rack,
            Some("js" | "mjs" | "cjs") => AppType::Node,
            _ => return Ok(None),
        };
        return Ok(exists(&app_root.join(file))?.then(|| (app_type, file.to_owned())));
    }
    for app_type in [AppType::Rack, AppType::Wsgi, AppType::Node] {
        let file = app_type.default_startup_file();
        if exists(&app_root.join(file))? {
            return Ok(Some((app_type, file.to_owned())));
        }
    }
    Ok(None)
}

/// Whether `path` exists; a permission error is reported, others mean no.
fn exists(path: &Path) -> Result<bool, MatchError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(MatchError(format!(
            "cannot check whether {} exists: permission denied; Apache's user needs to be able \
             to search the application's directories",
            path.display()
        ))),
        Err(_) => Ok(false),
    }
}

fn is_regular_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Follows one level of symlink (the classic `DocumentRoot/app -> /apps/foo/public`);
/// a relative target is taken from the link's directory, `..` resolved by name.
fn resolve_one_symlink(path: &Path) -> PathBuf {
    match std::fs::read_link(path) {
        Ok(target) if target.is_absolute() => target,
        Ok(target) => path
            .parent()
            .map_or(target.clone(), |dir| normalize(&dir.join(target))),
        Err(_) => path.to_path_buf(),
    }
}

/// Removes `.` and `..` components by name (no file system access).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

fn trim_trailing_slash(path: &[u8]) -> &[u8] {
    match path {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        _ => path,
    }
}

fn bytes_path(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_base_uri_wins() {
        let bases = vec!["/app".to_owned(), "/app/admin".to_owned(), "/".to_owned()];
        assert_eq!(
            longest_base_uri(&bases, b"/app/admin/x"),
            Some("/app/admin")
        );
        assert_eq!(longest_base_uri(&bases, b"/app/x"), Some("/app"));
        assert_eq!(longest_base_uri(&bases, b"/app"), Some("/app"));
        assert_eq!(longest_base_uri(&bases, b"/application"), None);
        assert_eq!(longest_base_uri(&bases, b"/"), None);
    }

    #[test]
    fn dot_dot_is_resolved_by_name() {
        assert_eq!(
            normalize(Path::new("/srv/site/../apps/./foo/public")),
            PathBuf::from("/srv/apps/foo/public")
        );
    }

    #[test]
    fn detection_is_reused_for_the_stat_throttle_rate() {
        let root = std::env::temp_dir().join(format!("mp-detect-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let throttle = Duration::from_secs(60);
        assert_eq!(detect_throttled(&root, None, throttle).unwrap(), None);
        std::fs::write(root.join("config.ru"), "run ->(_) { }").unwrap();
        // Within the throttle the first answer stands, as in the original ...
        assert_eq!(detect_throttled(&root, None, throttle).unwrap(), None);
        // ... unless the startup file asked for differs, or there is no throttle.
        let rack = Some((AppType::Rack, "config.ru".to_owned()));
        assert_eq!(
            detect_throttled(&root, Some("config.ru"), throttle).unwrap(),
            rack
        );
        assert_eq!(detect_throttled(&root, None, Duration::ZERO).unwrap(), rack);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn trailing_slash() {
        assert_eq!(trim_trailing_slash(b"/srv/app/public/"), b"/srv/app/public");
        assert_eq!(trim_trailing_slash(b"/"), b"/");
    }
}

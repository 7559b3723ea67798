//! Directives end to end: what a real Apache accepts and refuses.
//!
//! Most cases run `apache2 -t` on a generated `httpd.conf` and check the
//! exit status and the message ("Apache must refuse to start"). The
//! `.htaccess` cases need requests, so they start a real Apache on
//! 127.0.0.1. Everything here is self-contained: it writes its own configs
//! into a temporary directory and loads Debian's modules from
//! `/usr/lib/apache2/modules`.
//!
//! The module under test is `$MP_MODULE`, or `target/debug/mod_passenger.so`
//! (build it with `make module PROFILE=debug`).
//!
//! Every name and alias comes from the directive table
//! (`mod_passenger::config::table`), so these tests also check that the C
//! command table Apache sees and the Rust table agree.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mod_passenger::config::table::{Context, DIRECTIVES, Status};

const APACHE: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

/// Serializes the tests that start a whole Apache.
static RUNNING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn module_path() -> PathBuf {
    let path = std::env::var_os("MP_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/mod_passenger.so")
        });
    assert!(
        path.is_file(),
        "{} is missing: run `make module PROFILE=debug` first (or point MP_MODULE at a built mod_passenger.so)",
        path.display()
    );
    path
}

/// A private directory with an `httpd.conf` for one case.
struct Site {
    dir: PathBuf,
    port: u16,
}

impl Site {
    /// Writes `httpd.conf` with the base setup and `extra` after it.
    fn new(extra: &str) -> Site {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mp-directives-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        for d in [&dir, &dir.join("htdocs")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let user = if nix::unistd::geteuid().is_root() {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let conf = format!(
            "ServerRoot \"{dir}\"\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\nPidFile {dir}/httpd.pid\n\
             ErrorLog {dir}/error.log\nLogLevel warn\nDefaultRuntimeDir {dir}\nMutex file:{dir} default\n{user}\
             LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n\
             LoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
             LoadModule mime_module {MODULES}/mod_mime.so\n\
             TypesConfig /etc/mime.types\n\
             LoadModule passenger_module {module}\n\
             PassengerInstanceRegistryDir {dir}\n\
             DocumentRoot {dir}/htdocs\n\
             <Directory {dir}/htdocs>\n    Require all granted\n</Directory>\n\
             {extra}\n",
            dir = dir.display(),
            module = module_path().display(),
            extra = extra.replace("{dir}", &dir.to_string_lossy()),
        );
        std::fs::write(dir.join("httpd.conf"), conf).unwrap();
        Site { dir, port }
    }

    fn apache(&self, args: &[&str]) -> Output {
        Command::new(APACHE)
            .arg("-f")
            .arg(self.dir.join("httpd.conf"))
            .args(args)
            .output()
            .expect("apache2 runs")
    }

    /// `apache2 -t`: (success, stdout + stderr).
    fn configtest(&self) -> (bool, String) {
        let out = self.apache(&["-t"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.dir.join("htdocs").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        for dir in path
            .ancestors()
            .skip(1)
            .take_while(|d| d.starts_with(&self.dir))
        {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Asserts that Apache refuses `config` with a message containing every one of `expected`.
#[track_caller]
fn refused(config: &str, expected: &[&str]) {
    let site = Site::new(config);
    let (ok, text) = site.configtest();
    assert!(!ok, "apache2 -t accepted:\n{config}\n---\n{text}");
    assert!(
        text.contains("Syntax error on line"),
        "not a syntax error:\n{text}"
    );
    for e in expected {
        assert!(text.contains(e), "expected {e:?} in:\n{text}");
    }
}

/// Asserts that Apache accepts `config`; returns its output (warnings).
#[track_caller]
fn accepted(config: &str) -> String {
    let site = Site::new(config);
    let (ok, text) = site.configtest();
    assert!(ok, "apache2 -t refused:\n{config}\n---\n{text}");
    assert!(text.contains("Syntax OK"), "{text}");
    text
}

#[test]
fn bad_values_make_configtest_fail_naming_the_directive_and_what_is_allowed() {
    refused(
        "PassengerMaxPoolSize abc",
        &["PassengerMaxPoolSize must be a whole number of at least 1, not \"abc\""],
    );
    refused(
        "<VirtualHost *:80>\nPassengerSpawnMethod fast\n</VirtualHost>",
        &[
            "PassengerSpawnMethod must be smart or direct",
            "not \"fast\"",
        ],
    );
    refused(
        "<Location />\nPassengerMinInstances -1\n</Location>",
        &["PassengerMinInstances must be at least 0, not -1"],
    );
    refused(
        "PassengerLogLevel 8",
        &["PassengerLogLevel must be at most 7"],
    );
    refused(
        "RailsMaxPoolSize 0",
        &["RailsMaxPoolSize must be at least 1, not 0"],
    );
    refused(
        "PassengerAppType php",
        &["PassengerAppType must be rack, wsgi, node or meteor"],
    );
    refused(
        "PassengerBaseURI /app/",
        &["PassengerBaseURI must not end with \"/\""],
    );
    refused("RackBaseURI app", &["RackBaseURI must start with \"/\""]);
    refused(
        "PassengerPreStart localhost",
        &["PassengerPreStart must be an http:// or https:// URL"],
    );
    refused(
        "PassengerCtl hook_x {broken",
        &["PassengerCtl hook_x: the value starts like JSON but is not valid JSON"],
    );
    refused(
        "PassengerMaxPoolSize",
        &[
            "PassengerMaxPoolSize takes one argument",
            "an integer of at least 1",
        ],
    );
}

#[test]
fn an_unknown_flag_value_is_refused() {
    refused(
        "PassengerEnabled maybe",
        &["PassengerEnabled must be On or Off, not \"maybe\""],
    );
    refused(
        "<Directory {dir}/htdocs>\nPassengerHighPerformance 1\n</Directory>",
        &["PassengerHighPerformance must be On or Off, not \"1\""],
    );
    accepted("PassengerEnabled ON\nPassengerUserSwitching off");
}

#[test]
fn directives_in_the_wrong_context_are_refused_saying_where_they_belong() {
    refused(
        "<Directory {dir}/htdocs>\nPassengerMaxPoolSize 3\n</Directory>",
        &[
            "PassengerMaxPoolSize is not allowed inside <Directory>",
            "allowed only in the main server config",
        ],
    );
    refused(
        "<Location /x>\nPassengerDefaultUser www-data\n</Location>",
        &["PassengerDefaultUser is not allowed inside"],
    );
    refused(
        "<Files x.txt>\nPassengerAppRoot /srv/app\n</Files>",
        &[
            "PassengerAppRoot is not allowed inside <Files>",
            "<VirtualHost>, <Directory> and <Location>",
        ],
    );
    refused(
        "<If \"true\">\nPassengerEnabled off\n</If>",
        &["PassengerEnabled is not allowed inside <Files>, <If>"],
    );
    refused(
        "RailsAutoDetect on",
        &[
            "RailsAutoDetect is no longer supported",
            "use PassengerEnabled off",
        ],
    );
}

/// Every directive and alias, with its example value, in every place the
/// table allows it: Apache accepts the lot. Obsolete, not-yet-active and
/// no-effect directives say so, once per use, with their tags.
#[test]
fn every_directive_and_alias_is_accepted_where_the_table_allows_it() {
    let mut top = String::new();
    let mut vhost = String::new();
    let mut directory = String::new();
    let mut location = String::new();
    for d in DIRECTIVES
        .iter()
        .filter(|d| !matches!(d.status, Status::Removed(_)))
    {
        for name in std::iter::once(&d.name).chain(d.aliases) {
            let l = format!("{name} {}\n", d.example_args());
            match d.context {
                Context::Global | Context::Anywhere => top.push_str(&l),
                Context::App | Context::Location(_) => {
                    top.push_str(&l);
                    vhost.push_str(&l);
                    directory.push_str(&l);
                    location.push_str(&l);
                }
            }
        }
    }
    let text = accepted(&format!(
        "{top}<VirtualHost 127.0.0.1:80>\n{vhost}<Directory {{dir}}/htdocs>\n{directory}</Directory>\n\
         <Location /app>\n{location}</Location>\n</VirtualHost>\n"
    ));
    for d in DIRECTIVES {
        let tag = match d.status {
            Status::Obsolete => "MP1004",
            Status::Enterprise => "MP1002",
            Status::NoEffect => "MP1003",
            Status::Active | Status::Removed(_) => continue,
        };
        // Once per use, under the name used: the canonical name is used once
        // at top level, or in all four places for per-directory directives.
        let uses = if matches!(d.context, Context::Global | Context::Anywhere) {
            1
        } else {
            4
        };
        let needle = format!("{tag}: {} ", d.name);
        assert_eq!(text.matches(&needle).count(), uses, "{needle} in:\n{text}");
    }
    assert!(
        !text.contains("MP1001"),
        "no global directive was inside <VirtualHost>:\n{text}"
    );
}

#[test]
fn a_global_directive_inside_a_virtual_host_is_accepted_with_a_warning_naming_it() {
    let text = accepted(
        "<VirtualHost 127.0.0.1:80>\nRailsDefaultUser www-data\nPassengerMaxPoolSize 4\n</VirtualHost>",
    );
    assert!(
        text.contains("MP1001: RailsDefaultUser inside <VirtualHost> applies to the whole server"),
        "{text}"
    );
    assert!(
        text.contains("MP1001: PassengerMaxPoolSize inside <VirtualHost>"),
        "{text}"
    );
}

/// `apache2 -L` lists what the C command table registered: exactly the
/// table's names and aliases.
#[test]
fn apache_registers_exactly_the_tables_names() {
    let site = Site::new("");
    let out = site.apache(&["-L"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut registered: Vec<String> = listing
        .lines()
        .filter(|l| l.ends_with("(mod_passenger.c)"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = DIRECTIVES
        .iter()
        .flat_map(|d| std::iter::once(&d.name).chain(d.aliases))
        .map(|n| n.to_string())
        .collect();
    registered.sort();
    expected.sort();
    assert_eq!(registered, expected);
}

/// A running Apache for the `.htaccess` cases; stopped on drop.
struct Running {
    site: Site,
    _guard: parking_lot::MutexGuard<'static, ()>,
}

impl Running {
    fn start(site: Site) -> Running {
        let guard = RUNNING.lock();
        let out = site.apache(&["-k", "start"]);
        assert!(
            out.status.success(),
            "apache2 -k start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            site.error_log()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", site.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Apache did not come up:\n{}",
                site.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Running {
            site,
            _guard: guard,
        }
    }

    /// GETs `path`; returns the status code.
    fn status(&self, path: &str) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.site.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.site.dir.join("httpd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        let _ = self.site.apache(&["-k", "stop"]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Some(pid) = pid
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn htaccess_dir(site: &Site, name: &str, allow_override: &str, htaccess: &str) -> String {
    site.write(&format!("{name}/.htaccess"), htaccess);
    site.write(&format!("{name}/index.txt"), "static\n");
    format!(
        "<Directory {}/htdocs/{name}>\n    AllowOverride {allow_override}\n    Require all granted\n</Directory>\n",
        site.dir.display()
    )
}

/// The per-location directives work in `.htaccess` (with the right
/// `AllowOverride`); application and global ones are refused there with a
/// message naming the directive; startup warnings are logged once.
#[test]
fn htaccess_takes_location_directives_and_refuses_the_others() {
    let site = Site::new("");
    let location: String = DIRECTIVES
        .iter()
        .filter(|d| matches!(d.context, Context::Location(_)) || d.context == Context::Anywhere)
        .filter(|d| !matches!(d.status, Status::Removed(_)))
        .filter(|d| d.name != "PassengerEnabled")
        .map(|d| format!("{} {}\n", d.name, d.example_args()))
        .collect();
    let mut conf = String::new();
    conf += &htaccess_dir(
        &site,
        "location",
        "All",
        &format!("PassengerEnabled on\n{location}"),
    );
    conf += &htaccess_dir(&site, "app", "All", "PassengerAppRoot /srv/app\n");
    conf += &htaccess_dir(&site, "global", "All", "PassengerMaxPoolSize 3\n");
    conf += &htaccess_dir(
        &site,
        "slashes-denied",
        "FileInfo",
        "PassengerAllowEncodedSlashes on\n",
    );
    conf += &htaccess_dir(
        &site,
        "slashes-ok",
        "Options",
        "PassengerAllowEncodedSlashes on\n",
    );
    conf += &htaccess_dir(
        &site,
        "listed",
        "None\n    AllowOverrideList PassengerAllowEncodedSlashes",
        "PassengerAllowEncodedSlashes on\n",
    );
    conf += "<VirtualHost 127.0.0.1:*>\n    PassengerDefaultUser www-data\n</VirtualHost>\n";
    let config = std::fs::read_to_string(site.dir.join("httpd.conf")).unwrap() + &conf;
    std::fs::write(site.dir.join("httpd.conf"), config).unwrap();

    let apache = Running::start(site);
    assert_eq!(
        apache.status("/location/index.txt"),
        200,
        "{}",
        apache.site.error_log()
    );
    assert_eq!(
        apache.status("/slashes-ok/index.txt"),
        200,
        "{}",
        apache.site.error_log()
    );
    assert_eq!(
        apache.status("/listed/index.txt"),
        200,
        "{}",
        apache.site.error_log()
    );
    assert_eq!(apache.status("/app/index.txt"), 500);
    assert_eq!(apache.status("/global/index.txt"), 500);
    assert_eq!(apache.status("/slashes-denied/index.txt"), 500);
    let log = apache.site.error_log();
    assert!(
        log.contains(
            "PassengerAppRoot is not allowed in .htaccess files: it is allowed in the server config"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "PassengerMaxPoolSize is not allowed in .htaccess files: it is a global directive"
        ),
        "{log}"
    );
    assert!(log.contains("PassengerAllowEncodedSlashes is allowed in .htaccess only where `AllowOverride Options`"), "{log}");
    // Read twice at startup, logged once.
    assert_eq!(
        log.matches("MP1001: PassengerDefaultUser inside <VirtualHost>")
            .count(),
        1,
        "{log}"
    );
    // Warnings from .htaccess are debug-level: not in a warn-level log.
    assert!(!log.contains("MP1004"), "{log}");
}

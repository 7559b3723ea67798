//! The end-to-end harness: a real Apache (Debian's `apache2`, event MPM) on
//! 127.0.0.1 with the freshly built mod_passenger.so, one per test.
//!
//! [`Apache::start`] renders an `httpd.conf` for a scenario into a private
//! directory, copies the test apps there (readable by the user the apps run
//! as), starts `apache2 -k start` and waits until the port answers. When the
//! test ends (drop), Apache is stopped and the error log is checked: any
//! line at warn level or above that the test did not allow (by its stable
//! tag, e.g. `MP0406`) fails the test.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The apache2 binary.
const APACHE: &str = "/usr/sbin/apache2";
/// Debian's module directory.
const MODULES: &str = "/usr/lib/apache2/modules";

/// Serializes the tests: each starts a whole Apache, and the machine has two
/// cores. Reentrant, so one test may run two Apaches.
static LOCK: parking_lot::ReentrantMutex<()> = parking_lot::ReentrantMutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The module under test: `MP_MODULE`, or the debug build in target/.
pub fn module_path() -> PathBuf {
    let path = std::env::var_os("MP_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug/mod_passenger.so"));
    assert!(
        path.is_file(),
        "{} is missing: run `make module PROFILE=debug` (the README's test command does)",
        path.display()
    );
    path
}

/// A running Apache for one test.
pub struct Apache {
    /// The private directory: config, logs, apps.
    pub dir: PathBuf,
    /// The port on 127.0.0.1.
    pub port: u16,
    allowed: Vec<String>,
    stopped: bool,
    /// The user that runs `apache2 -k ...`, when not the test's own.
    started_by: Option<String>,
    _guard: parking_lot::ReentrantMutexGuard<'static, ()>,
}

/// A scenario: extra configuration and the apps it needs.
pub struct Scenario {
    config: String,
    apps: Vec<&'static str>,
    module: Option<PathBuf>,
    started_by: Option<String>,
}

impl Scenario {
    /// A scenario with this configuration text. `{dir}` in it becomes the
    /// test's directory (apps are under `{dir}/apps/<name>`), `{port}` the port.
    pub fn new(config: &str) -> Scenario {
        Scenario {
            config: config.to_owned(),
            apps: Vec::new(),
            module: None,
            started_by: None,
        }
    }

    /// Starts Apache as `user` (with `runuser`) instead of as root: no
    /// `User`/`Group` lines, and the test directory belongs to `user`.
    pub fn started_by(mut self, user: &str) -> Scenario {
        self.started_by = Some(user.to_owned());
        self
    }

    /// Loads this copy of mod_passenger.so instead of the build's.
    pub fn module(mut self, path: PathBuf) -> Scenario {
        self.module = Some(path);
        self
    }

    /// Copies `apache-test/apps/<name>` into the test directory.
    pub fn app(mut self, name: &'static str) -> Scenario {
        self.apps.push(name);
        self
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line.
    pub status_line: String,
    /// The headers in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header of that name.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Apache {
    /// Starts Apache for `scenario`.
    pub fn start(scenario: Scenario) -> Apache {
        let apache = Apache::configure(scenario);
        let out = apache.ctl("start");
        assert!(
            out.status.success(),
            "apache2 -k start failed: {}\n{}",
            stderr(&out),
            apache.error_log()
        );
        apache.wait_until_up();
        apache
    }

    /// Writes the configuration and the apps of `scenario` without
    /// starting Apache (for a test that expects the start to fail).
    pub fn configure(scenario: Scenario) -> Apache {
        let guard = LOCK.lock();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mp-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("apps")).unwrap();
        std::fs::create_dir_all(dir.join("registry")).unwrap();
        for d in [&dir, &dir.join("apps"), &dir.join("registry")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for app in &scenario.apps {
            copy_tree(
                &repo().join("apache-test/apps").join(app),
                &dir.join("apps").join(app),
            );
        }
        let port = free_port();
        let config = scenario
            .config
            .replace("{dir}", &dir.to_string_lossy())
            .replace("{port}", &port.to_string());
        let user = if nix::unistd::geteuid().is_root() && scenario.started_by.is_none() {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let httpd_conf = format!(
            r#"ServerRoot "{dir}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {dir}/httpd.pid
ErrorLog {dir}/error.log
LogLevel info
DefaultRuntimeDir {dir}
Mutex file:{dir} default
{user}LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule mime_module {MODULES}/mod_mime.so
LoadModule dir_module {MODULES}/mod_dir.so
LoadModule env_module {MODULES}/mod_env.so
LoadModule alias_module {MODULES}/mod_alias.so
LoadModule rewrite_module {MODULES}/mod_rewrite.so
TypesConfig /etc/mime.types
StartServers 2
ServerLimit 8
ThreadsPerChild 25
MinSpareThreads 25
MaxSpareThreads 75
MaxRequestWorkers 100
LoadModule passenger_module {module}
PassengerInstanceRegistryDir {dir}/registry
{config}
"#,
            dir = dir.display(),
            module = scenario
                .module
                .clone()
                .unwrap_or_else(module_path)
                .display(),
        );
        std::fs::write(dir.join("httpd.conf"), httpd_conf).unwrap();
        if let Some(owner) = &scenario.started_by {
            let status = Command::new("chown")
                .args(["-R", owner])
                .arg(&dir)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown -R {owner} {}", dir.display());
        }
        Apache {
            dir,
            port,
            allowed: Vec::new(),
            stopped: false,
            started_by: scenario.started_by,
            _guard: guard,
        }
    }

    /// Runs `apache2 -f httpd.conf -k <action>`.
    pub fn ctl(&self, action: &str) -> std::process::Output {
        let mut command = match &self.started_by {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", APACHE]);
                c
            }
            None => Command::new(APACHE),
        };
        command
            .arg("-f")
            .arg(self.dir.join("httpd.conf"))
            .args(["-k", action])
            .output()
            .expect("apache2 runs")
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Apache did not come up:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets error-log lines containing `tag` through the final check.
    pub fn allow(&mut self, tag: &str) {
        self.allowed.push(tag.to_owned());
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Waits until the error log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.error_log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The instance directory of this Apache's agent.
    pub fn instance_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("registry"))
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    /// The agent's pid, from its instance directory.
    pub fn agent_pid(&self) -> i32 {
        let dirs = self.instance_dirs();
        assert_eq!(
            dirs.len(),
            1,
            "expected one instance directory, found {dirs:?}"
        );
        std::fs::read_to_string(dirs[0].join("agent.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A GET request.
    pub fn get(&self, path: &str) -> Response {
        self.request(
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            )
            .into_bytes(),
        )
    }

    /// Sends raw request bytes on a new connection; reads one response.
    pub fn request(&self, raw: &[u8]) -> Response {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Apache");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(raw).unwrap();
        read_response(&mut BufReader::new(stream), raw.starts_with(b"HEAD")).expect("a response")
    }

    /// Stops Apache and waits for its parent to exit.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // A test may end while Apache is still starting: wait a little for
        // its pid file rather than leave it running.
        let pid_file = self.dir.join("httpd.pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let Ok(pid_text) = std::fs::read_to_string(&pid_file) else {
            return;
        };
        let pid: i32 = pid_text.trim().parse().unwrap_or(0);
        let _ = self.ctl("stop");
        let deadline = Instant::now() + Duration::from_secs(15);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Error-log lines at warn level or above that no test allowed.
    pub fn unexpected_log_lines(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|line| {
                [":warn]", ":error]", ":crit]", ":alert]", ":emerg]"]
                    .iter()
                    .any(|l| line.contains(l))
            })
            .filter(|line| !self.allowed.iter().any(|tag| line.contains(tag.as_str())))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("error log of the failed test:\n{}", self.error_log());
            return;
        }
        let unexpected = self.unexpected_log_lines();
        assert!(
            unexpected.is_empty(),
            "unexpected error-log lines:\n{}",
            unexpected.join("\n")
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A virtual host serving `apps/<app>`: its DocumentRoot is the app's
/// `public/`, `extra` goes inside the vhost and `global` before it.
pub fn vhost(app: &str, extra: &str, global: &str) -> String {
    format!(
        r#"{global}
<VirtualHost 127.0.0.1:{{port}}>
    ServerName 127.0.0.1
    DocumentRoot {{dir}}/apps/{app}/public
    SetEnv MY_SETENV from-apache
    {extra}
    <Directory {{dir}}/apps/{app}/public>
        Require all granted
    </Directory>
</VirtualHost>
"#
    )
}

/// Starts Apache serving `apps/<app>` as [`vhost`] describes it.
pub fn serve_app(app: &'static str, extra: &str, global: &str) -> Apache {
    Apache::start(Scenario::new(&vhost(app, extra, global)).app(app))
}

/// A response body as JSON.
pub fn json(response: &Response) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()))
}

/// GETs `path`, which must answer 200, and returns the JSON body.
pub fn get_json(apache: &Apache, path: &str) -> serde_json::Value {
    let response = apache.get(path);
    assert_eq!(response.status, 200, "{}", apache.error_log());
    json(&response)
}

/// The pid of the app process that serves `/env` (the test apps' environment dump).
pub fn app_pid(apache: &Apache) -> i64 {
    get_json(apache, "/env")["pid"].as_i64().expect("a pid")
}

/// The SHA-256 of `data`, in hex (through sha256sum).
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Reads one HTTP/1.x response (Content-Length, chunked or until close).
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status_line = line.trim_end().to_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut response = Response {
        status,
        status_line,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 {
        return Ok(response);
    }
    if response
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                line.clear();
                reader.read_line(&mut line)?;
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            response.body.extend_from_slice(&chunk);
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(len) = response
        .header("Content-Length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        response.body.resize(len, 0);
        reader.read_exact(&mut response.body)?;
    } else {
        reader.read_to_end(&mut response.body)?;
    }
    Ok(response)
}

/// Whether a process exists.
pub fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Pids of processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
            && process_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// The user that owns a process.
pub fn process_user(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    let meta =
        std::fs::symlink_metadata(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from).unwrap(), to).unwrap();
    } else if meta.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            if entry.file_name() == "__pycache__" {
                continue;
            }
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

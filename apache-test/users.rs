//! User switching (reference §4.5), through a real Apache started as root:
//! the app runs as the owner of its startup file, `PassengerUser` and
//! `PassengerGroup` override it, root-owned apps fall back to
//! `PassengerDefaultUser`, and switching off uses the default user.

use std::os::unix::fs::MetadataExt;

use crate::harness::{Apache, Scenario, serve_app, vhost};

/// The uid, gid, HOME and USER the app sees.
fn identity(apache: &Apache) -> (u64, String, String) {
    let response = apache.get("/env");
    assert_eq!(response.status, 200, "{}", apache.error_log());
    let env: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    (
        env["uid"].as_u64().unwrap(),
        env["os_env"]["HOME"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        env["os_env"]["USER"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn chown_tree(path: &std::path::Path, user: &str) {
    let status = std::process::Command::new("chown")
        .args(["-R", user])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn uid_of(name: &str) -> u64 {
    u64::from(
        nix::unistd::User::from_name(name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw(),
    )
}

#[test]
fn a_root_owned_app_runs_as_the_default_user_and_says_why() {
    let apache = serve_app("wsgi", "", "");
    let startup = apache.dir.join("apps/wsgi/passenger_wsgi.py");
    assert_eq!(std::fs::metadata(&startup).unwrap().uid(), 0);
    let (uid, _, user) = identity(&apache);
    assert_eq!(uid, uid_of("nobody"));
    assert_eq!(user, "nobody");
    let log = apache.error_log();
    assert!(
        log.contains("MP0302") && log.contains("is owned by root"),
        "{log}"
    );
    assert_eq!(log.matches("MP0302").count(), 1, "logged once: {log}");
}

#[test]
fn the_app_runs_as_the_owner_of_its_startup_file() {
    let apache = serve_app("wsgi", "", "");
    chown_tree(&apache.dir.join("apps/wsgi"), "www-data:www-data");
    let (uid, home, user) = identity(&apache);
    assert_eq!(uid, uid_of("www-data"));
    assert_eq!(user, "www-data");
    assert_eq!(home, "/var/www");
}

#[test]
fn passenger_user_overrides_the_owner() {
    let apache = serve_app(
        "wsgi",
        "PassengerUser daemon\n    PassengerGroup daemon",
        "",
    );
    chown_tree(&apache.dir.join("apps/wsgi"), "www-data:www-data");
    let (uid, _, user) = identity(&apache);
    assert_eq!((uid, user.as_str()), (uid_of("daemon"), "daemon"));
}

#[test]
fn switching_off_runs_apps_as_the_default_user() {
    let apache = serve_app(
        "wsgi",
        "",
        "PassengerUserSwitching off\nPassengerDefaultUser daemon",
    );
    chown_tree(&apache.dir.join("apps/wsgi"), "www-data:www-data");
    let (uid, _, _) = identity(&apache);
    assert_eq!(uid, uid_of("daemon"));
}

#[test]
fn a_missing_user_is_an_error_naming_it() {
    let mut apache = serve_app("wsgi", "PassengerUser no_such_user_here", "");
    apache.allow("MP0404");
    let response = apache.get("/");
    assert_eq!(response.status, 500);
    assert!(
        apache
            .error_log()
            .contains("PassengerUser no_such_user_here: no such user"),
        "{}",
        apache.error_log()
    );
}

#[test]
fn an_unreadable_app_names_the_user_and_the_path() {
    let mut apache = serve_app("wsgi", "", "");
    apache.allow("MP0404");
    let root = apache.dir.join("apps/wsgi");
    chown_tree(&root, "www-data:www-data");
    std::fs::set_permissions(
        root.join("passenger_wsgi.py"),
        std::os::unix::fs::PermissionsExt::from_mode(0o200),
    )
    .unwrap();
    assert_eq!(apache.get("/").status, 500);
    let log = apache.error_log();
    assert!(
        log.contains("user www-data (group www-data) cannot read")
            && log.contains("passenger_wsgi.py"),
        "{log}"
    );
}

#[test]
fn apache_started_by_a_user_runs_the_agent_and_the_app_as_that_user() {
    let apache = Apache::start(
        Scenario::new(&vhost("wsgi", "", ""))
            .app("wsgi")
            .started_by("www-data"),
    );
    let www_data = uid_of("www-data");
    let (uid, _, user) = identity(&apache);
    assert_eq!((uid, user.as_str()), (www_data, "www-data"));
    let agent = std::fs::metadata(format!("/proc/{}", apache.agent_pid())).unwrap();
    assert_eq!(u64::from(agent.uid()), www_data);
}

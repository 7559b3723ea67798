//! Error pages (issue: error pages and spawn failures): friendly pages,
//! plain pages with an error id, PassengerCustomErrorPage,
//! PassengerErrorOverride with ErrorDocument, and JSON for JSON requests.

use std::time::{Duration, Instant};

use crate::harness::{Apache, serve_app};

fn broken(extra: &str) -> Apache {
    let mut apache = serve_app("broken", extra, "");
    apache.allow("MP0404");
    apache
}

#[test]
fn friendly_pages_show_the_error_the_output_the_step_and_the_user() {
    let apache = broken("PassengerFriendlyErrorPages on");
    let page = apache.get("/");
    assert_eq!(page.status, 500);
    let text = page.text();
    for needle in [
        "module_that_does_not_exist",
        "loading the application",
        "nobody",
        "nogroup",
        "Traceback",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert_eq!(
        page.header("Cache-Control"),
        Some("no-cache, no-store, must-revalidate")
    );
}

#[test]
fn development_environment_turns_friendly_pages_on() {
    let apache = broken("PassengerAppEnv development");
    assert!(
        apache
            .get("/")
            .text()
            .contains("module_that_does_not_exist")
    );
}

#[test]
fn plain_pages_show_only_an_error_id_that_is_in_the_log() {
    let apache = broken("PassengerFriendlyErrorPages off");
    let page = apache.get("/");
    assert_eq!(page.status, 500);
    let text = page.text();
    assert!(!text.contains("module_that_does_not_exist"), "{text}");
    let id = text
        .split("<code>")
        .nth(1)
        .and_then(|t| t.split("</code>").next())
        .expect("an error id");
    assert!(
        apache.error_log().contains(&format!("error id {id}")),
        "{}",
        apache.error_log()
    );
}

#[test]
fn json_requests_get_json() {
    let apache = broken("PassengerFriendlyErrorPages off");
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        apache.port
    );
    let page = apache.request(raw.as_bytes());
    assert_eq!(page.status, 500);
    assert_eq!(page.header("Content-Type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(doc["status"], 500);
}

#[test]
fn a_custom_error_page_is_served_instead() {
    let apache = broken("PassengerCustomErrorPage {dir}/apps/broken/custom.html");
    std::fs::write(
        apache.dir.join("apps/broken/custom.html"),
        "<p>custom sorry</p>",
    )
    .unwrap();
    let page = apache.get("/");
    assert_eq!(page.status, 500);
    assert_eq!(page.text(), "<p>custom sorry</p>");
}

#[test]
fn error_override_lets_apache_render_app_errors() {
    let apache = serve_app(
        "wsgi",
        "PassengerErrorOverride on\n    ErrorDocument 500 /oops.html",
        "",
    );
    std::fs::write(
        apache.dir.join("apps/wsgi/public/oops.html"),
        "apache's own page",
    )
    .unwrap();
    let page = apache.get("/exc_info");
    assert_eq!(page.status, 500);
    assert_eq!(page.text(), "apache's own page");
    assert_eq!(apache.get("/").text(), "hello from wsgi");
}

#[test]
fn an_app_slower_than_the_start_timeout_gets_a_500_naming_the_limit() {
    let mut apache = serve_app(
        "slow-start",
        "PassengerStartTimeout 2\n    PassengerFriendlyErrorPages on",
        "",
    );
    apache.allow("MP0404");
    let started = Instant::now();
    let page = apache.get("/");
    assert_eq!(page.status, 500, "{}", apache.error_log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        page.text().contains("PassengerStartTimeout"),
        "{}",
        page.text()
    );
    assert!(
        apache
            .error_log()
            .contains("did not become ready within 2 s"),
        "{}",
        apache.error_log()
    );
}

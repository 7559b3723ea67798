//! Sub-URI deployment: `PassengerBaseURI` with the classic layout
//! (`DocumentRoot/app1 -> /apps/foo/public`), several apps in one vhost,
//! and the longest matching base URI winning.

use crate::harness::{Apache, Scenario};

fn apache() -> Apache {
    Apache::start(
        Scenario::new(
            r#"<VirtualHost 127.0.0.1:{port}>
    ServerName 127.0.0.1
    DocumentRoot {dir}/apps/site
    PassengerBaseURI /app1
    RackBaseURI /app2
    RailsBaseURI /app1/admin
    <Directory {dir}/apps>
        Options FollowSymLinks
        Require all granted
    </Directory>
</VirtualHost>
"#,
        )
        .app("site")
        .app("wsgi")
        .app("flask"),
    )
}

#[test]
fn each_sub_uri_reaches_its_app_with_script_name_and_path_info() {
    let apache = apache();
    let response = apache.get("/app1/env?q=1");
    assert_eq!(response.status, 200, "{}", apache.error_log());
    let env: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(env["SCRIPT_NAME"], "/app1");
    assert_eq!(env["PATH_INFO"], "/env");
    assert_eq!(env["QUERY_STRING"], "q=1");
    for var in [
        "PASSENGER_BASE_URI",
        "RAILS_RELATIVE_URL_ROOT",
        "RACK_BASE_URI",
    ] {
        assert_eq!(env["os_env"][var], "/app1", "{var}");
    }
    assert_eq!(apache.get("/app2/hello/there").text(), "Hello, there! q=");
}

#[test]
fn the_longest_base_uri_wins() {
    let apache = apache();
    // /app1/admin is inside /app1 and is a different app (Flask).
    assert_eq!(apache.get("/app1/admin/hello/x").text(), "Hello, x! q=");
    assert_eq!(apache.get("/app1/").text(), "hello from wsgi");
}

#[test]
fn static_files_of_each_app_are_served_by_apache() {
    let apache = apache();
    assert_eq!(apache.get("/app1/static.txt").text(), "static file\n");
}

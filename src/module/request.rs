//! Turns an Apache request into the `REQUEST` message the agent receives.
//!
//! The environment is built here once, in CGI/PEP 3333 form, so neither the
//! agent nor the loaders parse HTTP again. Header names become `HTTP_*`
//! variables by one strict rule ([`header_env_name`]): letters, digits and
//! `-` only. Anything else is dropped, so `X_User` can never pose as
//! `X-User` (CVE-2015-7519), and a `Proxy` header never becomes
//! `HTTP_PROXY` (httpoxy).

use crate::config::DirConfig;
use crate::module::matcher::Match;
use std::borrow::Cow;

use crate::protocol::{PairList, REQUEST_HAS_BODY, REQUEST_HTTPS, REQUEST_UPGRADE, RequestHead};

/// A request as the shim describes it, borrowed for one call.
#[derive(Debug, Default)]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a [u8],
    /// The decoded path.
    pub uri: &'a [u8],
    /// The request target as sent.
    pub unparsed_uri: &'a [u8],
    /// The query string as sent, without `?`.
    pub args: &'a [u8],
    /// The protocol, e.g. `HTTP/1.1`.
    pub protocol: &'a [u8],
    /// The mapped file name.
    pub filename: &'a [u8],
    /// The document root.
    pub document_root: &'a [u8],
    /// The server name.
    pub server_name: &'a [u8],
    /// The server port.
    pub server_port: u32,
    /// The client's address.
    pub client_ip: &'a [u8],
    /// The client's port.
    pub client_port: u32,
    /// The local address.
    pub local_ip: &'a [u8],
    /// The authenticated user, or empty.
    pub remote_user: &'a [u8],
    /// The authentication type, or empty.
    pub auth_type: &'a [u8],
    /// Whether the connection is TLS.
    pub is_https: bool,
    /// Content-Length when known.
    pub content_length: Option<u64>,
    /// Whether a body follows.
    pub has_body: bool,
    /// The request headers.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// Apache's subprocess environment (SetEnv and friends).
    pub env: Vec<(&'a [u8], &'a [u8])>,
}

/// Builds the REQUEST head for `req`, bound for the app in `m`.
pub fn build_request(
    dir: &DirConfig,
    m: &Match,
    req: &RequestInfo,
    server_software: &[u8],
) -> RequestHead {
    // Borrowed until the end, where SetEnv has had its say and the pairs
    // are written into the frame's encoding in one go.
    let mut env: Vec<(Cow<[u8]>, &[u8])> =
        Vec::with_capacity(24 + req.headers.len() + req.env.len());
    let server_port = req.server_port.to_string();
    let client_port = req.client_port.to_string();
    macro_rules! put {
        ($name:expr, $value:expr $(,)?) => {
            env.push((Cow::Borrowed(&$name[..]), &$value[..]))
        };
    }

    let script_name = m.base_uri.as_deref().unwrap_or("").as_bytes();
    let path_info = req.uri.strip_prefix(script_name).unwrap_or(req.uri);
    put!(b"REQUEST_METHOD", req.method);
    put!(b"SCRIPT_NAME", script_name);
    put!(b"PATH_INFO", path_info);
    put!(b"QUERY_STRING", req.args);
    put!(b"REQUEST_URI", req.unparsed_uri);
    put!(b"SERVER_NAME", req.server_name);
    put!(b"SERVER_PORT", server_port.as_bytes());
    put!(
        b"SERVER_PROTOCOL",
        if req.protocol.is_empty() {
            b"HTTP/1.0"
        } else {
            req.protocol
        },
    );
    put!(b"SERVER_SOFTWARE", server_software);
    put!(b"SERVER_ADDR", req.local_ip);
    put!(b"REMOTE_ADDR", req.client_ip);
    put!(b"REMOTE_PORT", client_port.as_bytes());
    put!(b"DOCUMENT_ROOT", req.document_root);
    put!(b"GATEWAY_INTERFACE", b"CGI/1.1");
    if !req.remote_user.is_empty() {
        put!(b"REMOTE_USER", req.remote_user);
    }
    if !req.auth_type.is_empty() {
        put!(b"AUTH_TYPE", req.auth_type);
    }
    if req.is_https {
        put!(b"HTTPS", b"on");
    }
    for &(name, value) in &req.headers {
        if name.eq_ignore_ascii_case(b"content-type") {
            put!(b"CONTENT_TYPE", value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            put!(b"CONTENT_LENGTH", value);
        } else if let Some(var) = header_env_name(name)
            && var != b"HTTP_PROXY"
        {
            env.push((Cow::Owned(var), value));
        }
    }
    if req.has_body && req.content_length.is_none() {
        // A chunked body: the loaders read until END.
        env.push((Cow::Borrowed(b"HTTP_TRANSFER_ENCODING"), b"chunked"));
    }
    let fixed = env.len();
    for &(name, value) in &req.env {
        if name == b"SCRIPT_NAME" || name == b"PATH_INFO" {
            continue;
        }
        // SetEnv may override what we computed (as the original allows),
        // except the request line, which must stay what the client sent.
        match env[..fixed].iter().position(|(n, _)| n.as_ref() == name) {
            Some(i) if !is_request_line_var(name) => env[i].1 = value,
            Some(_) => {}
            None => env.push((Cow::Borrowed(name), value)),
        }
    }

    let mut flags = 0;
    if req.has_body {
        flags |= REQUEST_HAS_BODY;
    }
    if req.is_https {
        flags |= REQUEST_HTTPS;
    }
    if asks_to_upgrade(req) {
        flags |= REQUEST_UPGRADE;
    }
    RequestHead {
        flags,
        options: app_options(dir, m),
        env: encode_env(&env),
    }
}

/// The environment in the frame's encoding, in one buffer sized up front.
fn encode_env(env: &[(Cow<[u8]>, &[u8])]) -> PairList {
    let bytes = env.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut list = PairList::with_capacity(bytes);
    for (name, value) in env {
        list.push(name, value);
    }
    list
}

/// The app's options for the agent: the directives set for this location,
/// with the module's resolved app root, type, startup file and base URI.
fn app_options(dir: &DirConfig, m: &Match) -> PairList {
    let resolved: [(&str, Option<String>); 4] = [
        (
            "PassengerAppRoot",
            Some(m.app_root.to_string_lossy().into_owned()),
        ),
        ("PassengerAppType", Some(m.app_type.name().to_owned())),
        (
            "PassengerStartupFile",
            Some(m.startup_file.clone()).filter(|s| !s.is_empty()),
        ),
        ("PassengerBaseURI", m.base_uri.clone()),
    ];
    let mut options: PairList = dir
        .option_pairs()
        .into_iter()
        .filter(|(name, _)| !resolved.iter().any(|(r, _)| r == name))
        .collect();
    for (name, value) in resolved {
        if let Some(value) = value {
            options.push(name.as_bytes(), value.as_bytes());
        }
    }
    options
}

/// Whether the client asks to switch protocols (RFC 9110 §7.8): an
/// HTTP/1.1 request without a body, with an `Upgrade` header and the
/// `upgrade` token in `Connection`. HTTP/2 has no such mechanism.
fn asks_to_upgrade(req: &RequestInfo) -> bool {
    fn header<'a>(req: &'a RequestInfo, wanted: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        req.headers
            .iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|&(_, value)| value)
    }
    req.protocol == b"HTTP/1.1"
        && !req.has_body
        && header(req, b"upgrade").any(|value| !value.trim_ascii().is_empty())
        && header(req, b"connection").any(|value| {
            value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

fn is_request_line_var(name: &[u8]) -> bool {
    matches!(name, b"REQUEST_METHOD" | b"QUERY_STRING" | b"REQUEST_URI")
}

/// `HTTP_` + the header name upper-cased with `-` as `_`, or `None` when the
/// name has a byte other than a letter, a digit or `-`.
pub fn header_env_name(name: &[u8]) -> Option<Vec<u8>> {
    if name.is_empty() || !name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let mut var = Vec::with_capacity(5 + name.len());
    var.extend_from_slice(b"HTTP_");
    var.extend(name.iter().map(|&b| {
        if b == b'-' {
            b'_'
        } else {
            b.to_ascii_uppercase()
        }
    }));
    Some(var)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_follow_one_strict_rule() {
        assert_eq!(
            header_env_name(b"X-User").as_deref(),
            Some(&b"HTTP_X_USER"[..])
        );
        assert_eq!(header_env_name(b"accept"), Some(b"HTTP_ACCEPT".to_vec()));
        assert_eq!(header_env_name(b"X_User"), None);
        assert_eq!(header_env_name(b"X.User"), None);
        assert_eq!(header_env_name(b"X User"), None);
        assert_eq!(header_env_name(b""), None);
    }

    #[test]
    fn an_upgrade_needs_http_1_1_both_headers_and_no_body() {
        let websocket: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"example.org"),
            (b"connection", b"keep-alive, Upgrade"),
            (b"Upgrade", b"websocket"),
        ];
        let req =
            |protocol: &'static [u8], headers: &[(&'static [u8], &'static [u8])], has_body| {
                RequestInfo {
                    protocol,
                    headers: headers.to_vec(),
                    has_body,
                    ..RequestInfo::default()
                }
            };
        assert!(asks_to_upgrade(&req(b"HTTP/1.1", &websocket, false)));
        assert!(!asks_to_upgrade(&req(b"HTTP/1.0", &websocket, false)));
        assert!(!asks_to_upgrade(&req(b"HTTP/2.0", &websocket, false)));
        assert!(!asks_to_upgrade(&req(b"HTTP/1.1", &websocket, true)));
        assert!(!asks_to_upgrade(&req(b"HTTP/1.1", &websocket[..2], false)));
        let no_token = [
            (&b"Connection"[..], &b"keep-alive, upgraded"[..]),
            websocket[2],
        ];
        assert!(!asks_to_upgrade(&req(b"HTTP/1.1", &no_token, false)));
        let empty_upgrade = [websocket[1], (&b"Upgrade"[..], &b" "[..])];
        assert!(!asks_to_upgrade(&req(b"HTTP/1.1", &empty_upgrade, false)));
    }
}

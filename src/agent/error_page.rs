//! The pages the agent answers with when a request cannot reach the app:
//! a spawn failure (friendly, plain or custom), a full queue, a queue
//! timeout, a process that died. HTML by default; JSON when the request
//! asked for JSON. Never cached.

use crate::config::AppOptions;
use crate::pool::CheckoutError;
use crate::protocol::{PairList, ResponseHead};
use crate::spawn;

/// A whole response: head and body.
pub struct Page {
    /// Status and headers.
    pub head: ResponseHead,
    /// The body.
    pub body: Vec<u8>,
}

/// What the page needs to know about the request.
pub struct RequestKind {
    /// The request asked for JSON (Content-Type or Accept).
    pub wants_json: bool,
}

impl RequestKind {
    /// Reads the request's CGI environment.
    pub fn of(env: &PairList) -> RequestKind {
        let wants_json = env.iter().any(|(name, value)| {
            (name == b"CONTENT_TYPE" || name == b"HTTP_ACCEPT")
                && value
                    .windows(16)
                    .any(|w| w.eq_ignore_ascii_case(b"application/json"))
        });
        RequestKind { wants_json }
    }
}

/// The page for a checkout that failed.
pub fn checkout_failed(e: &CheckoutError, options: &AppOptions, kind: &RequestKind) -> Page {
    match e {
        CheckoutError::QueueFull => simple(
            503,
            "Service Unavailable",
            "This website is under heavy load (queue full)",
            "We're sorry, too many people are accessing this website at the same time. Please try again later.",
            kind,
        ),
        CheckoutError::QueueTimeout => simple(
            504,
            "Gateway Timeout",
            "This website is under heavy load",
            "The request waited too long for the application. Please try again later.",
            kind,
        ),
        CheckoutError::ShuttingDown => simple(
            503,
            "Service Unavailable",
            "This website is restarting",
            "Please try again in a moment.",
            kind,
        ),
        CheckoutError::SpawnFailed(error) => spawn_failed(error, options, kind),
    }
}

/// The page for a process that failed while serving the request.
pub fn app_failed(kind: &RequestKind) -> Page {
    simple(
        502,
        "Bad Gateway",
        "The application failed",
        "The application process handling this request stopped before it answered. It has been replaced; please try again.",
        kind,
    )
}

/// The page for a request that ran longer than PassengerMaxRequestTime.
pub fn request_timed_out(kind: &RequestKind) -> Page {
    simple(
        504,
        "Gateway Timeout",
        "The application took too long",
        "The request ran longer than the server allows (PassengerMaxRequestTime) and was stopped.",
        kind,
    )
}

/// A spawn failure: the custom page, the friendly page (error, output,
/// failed step, user and group), or a plain page with the error id.
fn spawn_failed(e: &spawn::Error, options: &AppOptions, kind: &RequestKind) -> Page {
    if let Some(path) = &options.custom_error_page {
        match std::fs::read(path) {
            Ok(body) => {
                return page(
                    500,
                    "Internal Server Error",
                    "text/html; charset=UTF-8",
                    body,
                );
            }
            Err(err) => log::error!(target: "MP0710", "PassengerCustomErrorPage {path}: {err}"),
        }
    }
    if kind.wants_json {
        let mut doc = serde_json::json!({
            "status": 500,
            "error": "the application could not be started",
            "error_id": e.id,
        });
        if options.friendly_error_pages {
            doc["summary"] = e.summary.clone().into();
            doc["step"] = e.step.to_string().into();
            doc["user"] = e.user.clone().into();
            doc["group"] = e.group.clone().into();
            doc["details"] = e.details.clone().into();
            doc["output"] = e.output.clone().into();
        }
        return page(
            500,
            "Internal Server Error",
            "application/json",
            doc.to_string().into_bytes(),
        );
    }
    let body = if options.friendly_error_pages {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>The application could not be started</title></head>\n\
             <body>\n<h1>The application could not be started</h1>\n\
             <p><strong>{summary}</strong></p>\n\
             <table>\n<tr><th>Application root</th><td>{root}</td></tr>\n\
             <tr><th>Failed while</th><td>{step}</td></tr>\n\
             <tr><th>User</th><td>{user}</td></tr>\n<tr><th>Group</th><td>{group}</td></tr>\n\
             <tr><th>Error id</th><td>{id}</td></tr>\n</table>\n\
             <h2>Details</h2>\n<pre>{details}</pre>\n<h2>Output of the application</h2>\n<pre>{output}</pre>\n\
             <p>This page is shown because friendly error pages are on (PassengerFriendlyErrorPages, \
             or the app's environment is development). Turn them off in production.</p>\n</body></html>\n",
            summary = escape(&e.summary),
            root = escape(&e.app_root),
            step = escape(&e.step.to_string()),
            user = escape(&e.user),
            group = escape(&e.group),
            id = escape(&e.id),
            details = escape(&e.details),
            output = escape(&e.output),
        )
    } else {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>We're sorry, but something went wrong</title></head>\n\
             <body>\n<h1>We're sorry, but something went wrong.</h1>\n\
             <p>The application could not be started. The server's administrator can find the \
             details in the error log under error id <code>{}</code>.</p>\n</body></html>\n",
            escape(&e.id)
        )
    };
    page(
        500,
        "Internal Server Error",
        "text/html; charset=UTF-8",
        body.into_bytes(),
    )
}

fn simple(status: u16, reason: &str, title: &str, text: &str, kind: &RequestKind) -> Page {
    if kind.wants_json {
        let doc = serde_json::json!({ "status": status, "error": title, "message": text });
        return page(
            status,
            reason,
            "application/json",
            doc.to_string().into_bytes(),
        );
    }
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body>\n<h1>{title}</h1>\n<p>{text}</p>\n</body></html>\n"
    );
    page(
        status,
        reason,
        "text/html; charset=UTF-8",
        body.into_bytes(),
    )
}

fn page(status: u16, reason: &str, content_type: &str, body: Vec<u8>) -> Page {
    let headers = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ]
    .into_iter()
    .collect();
    Page {
        head: ResponseHead {
            status,
            reason: reason.as_bytes().to_vec(),
            headers,
        },
        body,
    }
}

/// HTML-escapes text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_chosen_by_content_type_or_accept() {
        let env: PairList = [("HTTP_ACCEPT", "text/html, Application/JSON")]
            .into_iter()
            .collect();
        assert!(RequestKind::of(&env).wants_json);
        let html: PairList = [("HTTP_ACCEPT", "text/html")].into_iter().collect();
        assert!(!RequestKind::of(&html).wants_json);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}

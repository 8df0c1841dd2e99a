//! The page, its script and its stylesheet, compiled into the binary: the
//! web view needs no files on disk and fetches nothing from anywhere else.

use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};

use super::server::{WebBody, full};

const INDEX: &str = include_str!("../../assets/web/index.html");
const SCRIPT: &str = include_str!("../../assets/web/app.js");
const STYLE: &str = include_str!("../../assets/web/style.css");
const ICON: &str = include_str!("../../assets/web/icon.svg");

/// The asset at `path`, if there is one.
pub fn get(path: &str) -> Option<Response<WebBody>> {
    let (body, content_type) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/assets/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/assets/style.css" => (STYLE, "text/css; charset=utf-8"),
        "/assets/icon.svg" | "/favicon.ico" => (ICON, "image/svg+xml"),
        _ => return None,
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Served by the daemon that runs: always its own version.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

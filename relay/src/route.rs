//! Routing: what a request asks for, decided from its method and path alone, before any key is checked.
//!
//! `GET /healthz` needs no key; a configured route's path needs `POST`; `GET /v1/streams/{id}` resumes an answer and
//! `DELETE` on it stops one ([`crate::resume`]); anything else is 404. Matching is exact
//! (no prefixes, no query): the vendor URL is the route's, never built from the request. The next stage is
//! [`crate::auth`].

use http::Method;

use crate::config::Route;

/// Resumable answers live under this path, followed by their stream id ([`crate::resume`]).
pub const STREAMS_PATH: &str = "/v1/streams/";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// `GET /healthz`: the process is up.
    Health,
    /// The index of the configured route.
    Route(usize),
    /// `GET /v1/streams/{id}`: resume an answer ([`crate::resume`]).
    Resume,
    /// `DELETE /v1/streams/{id}`: stop an answer (the user pressed Stop: cancel the vendor call now).
    StopStream,
}

/// Why a request has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
}

/// Picks the destination of `method path` among `routes`.
pub fn route(method: &Method, path: &str, routes: &[Route]) -> Result<Routed, RouteError> {
    if path == "/healthz" && method == Method::GET {
        return Ok(Routed::Health);
    }
    let index = routes.iter().position(|r| r.path == path);
    let Some(index) = index else {
        if path.starts_with(STREAMS_PATH) {
            match *method {
                Method::GET => return Ok(Routed::Resume),
                Method::DELETE => return Ok(Routed::StopStream),
                _ => {}
            }
        }
        return Err(RouteError::NotFound);
    };
    if method != Method::POST {
        return Err(RouteError::MethodNotAllowed);
    }
    Ok(Routed::Route(index))
}

//! Signed-in browsers: a random session id in a cookie (`__Host-` prefix:
//! Secure, Path=/, no Domain, so no other site or subdomain can set it;
//! HttpOnly, SameSite=Strict), kept in memory with an idle and an absolute
//! expiry, and a per-session CSRF token that every state-changing request
//! must carry in a header (a page of another site can send the cookie but
//! can neither read the token nor set the header).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::users::{Principal, constant_time_eq};

pub const COOKIE: &str = "__Host-agentguard";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// And any session after this long.
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; the oldest goes first.
const MAX_SESSIONS: usize = 1024;

struct Session {
    principal: Principal,
    csrf: String,
    created: Instant,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// A session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Current {
    pub id: String,
    pub principal: Principal,
    pub csrf: String,
}

impl Sessions {
    /// A new session for `principal`: (id for the cookie, CSRF token).
    pub fn create(&self, principal: Principal) -> Current {
        let (id, csrf) = (random_id(), random_id());
        let now = Instant::now();
        let mut map = lock(&self.map);
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                principal: principal.clone(),
                csrf: csrf.clone(),
                created: now,
                last_seen: now,
            },
        );
        Current {
            id,
            principal,
            csrf,
        }
    }

    /// The live session with `id`, touched.
    pub fn get(&self, id: &str) -> Option<Current> {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let session = map.get_mut(id)?;
        if !live(session, now) {
            map.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(Current {
            id: id.to_owned(),
            principal: session.principal.clone(),
            csrf: session.csrf.clone(),
        })
    }

    pub fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }
}

impl Current {
    /// Whether `header` is this session's CSRF token.
    pub fn csrf_matches(&self, header: Option<&str>) -> bool {
        header.is_some_and(|h| constant_time_eq(h.as_bytes(), self.csrf.as_bytes()))
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last_seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

/// The session cookie of a request, if it sent one.
pub fn cookie(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_owned())
        })
}

pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        ABSOLUTE.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// 256 random bits, hex.
fn random_id() -> String {
    let mut b = [0u8; 32];
    // Without system randomness there is no safe session id: fail loudly
    // rather than hand out guessable ones.
    getrandom::fill(&mut b).expect("system randomness for session ids");
    hex::encode(b)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::users::Role;

    fn alice() -> Principal {
        Principal {
            name: "alice".into(),
            role: Role::Approver,
            via: "password",
        }
    }

    #[test]
    fn sessions_carry_their_principal_and_csrf_token() {
        let sessions = Sessions::default();
        let s = sessions.create(alice());
        assert_eq!(s.id.len(), 64);
        let got = sessions.get(&s.id).unwrap();
        assert_eq!(got.principal, alice());
        assert!(got.csrf_matches(Some(&s.csrf)));
        assert!(!got.csrf_matches(Some("guess")));
        assert!(!got.csrf_matches(None));
        assert!(sessions.get("not-a-session").is_none());
        sessions.remove(&s.id);
        assert!(sessions.get(&s.id).is_none());
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            hyper::header::COOKIE,
            format!("a=1; {COOKIE}=abc; b=2").parse().unwrap(),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        assert!(set_cookie("abc").contains("HttpOnly; SameSite=Strict"));
    }
}

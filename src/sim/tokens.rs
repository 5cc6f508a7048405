//! Issued OAuth access tokens, keyed by the token string, each with its client and expiry.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Issued {
    client_id: String,
    expires_at: Instant,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Never issued, or revoked.
    Unknown,
    Expired,
}

/// Expired tokens are swept when a new one is issued and more than this many are stored.
const SWEEP_ABOVE: usize = 4096;

#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: Mutex<HashMap<String, Issued>>,
}

impl TokenStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Issued>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a new opaque token for `client_id`, valid for `ttl` from `now`.
    pub fn issue(&self, client_id: &str, ttl: Duration, now: Instant) -> String {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 48]>());
        let expires_at = now.checked_add(ttl).unwrap_or(now + Duration::from_secs(86_400 * 365));
        let mut tokens = self.lock();
        if tokens.len() > SWEEP_ABOVE {
            tokens.retain(|_, t| t.expires_at > now);
        }
        tokens.insert(
            token.clone(),
            Issued {
                client_id: client_id.to_owned(),
                expires_at,
            },
        );
        token
    }

    /// The client id a token was issued to, if it is known and unexpired at `now`.
    pub fn check(&self, token: &str, now: Instant) -> Result<String, TokenError> {
        let mut tokens = self.lock();
        match tokens.get(token) {
            None => Err(TokenError::Unknown),
            Some(t) if t.expires_at <= now => {
                tokens.remove(token);
                Err(TokenError::Expired)
            }
            Some(t) => Ok(t.client_id.clone()),
        }
    }

    /// Invalidates every token issued so far.
    pub fn revoke_all(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_check_expire_revoke() {
        let store = TokenStore::default();
        let now = Instant::now();
        let a = store.issue("c", Duration::from_secs(10), now);
        let b = store.issue("c", Duration::from_secs(1), now);
        assert_ne!(a, b);
        assert_eq!(store.check(&a, now), Ok("c".to_owned()));
        assert_eq!(store.check(&b, now + Duration::from_secs(1)), Err(TokenError::Expired));
        assert_eq!(store.check("nope", now), Err(TokenError::Unknown));
        store.revoke_all();
        assert_eq!(store.check(&a, now), Err(TokenError::Unknown));
    }
}

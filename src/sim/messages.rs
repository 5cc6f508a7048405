//! Open Messaging messages received so far, keyed by integration and `channel.messageId`, so that a
//! repeated `messageId` is recognised and answered with the message and conversation it created.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use uuid::Uuid;

/// Ids Genesys assigned to a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The normalized message's `id`.
    pub id: String,
    pub conversation_id: String,
}

#[derive(Debug, Default)]
pub struct MessageStore {
    by_message_id: Mutex<HashMap<(String, String), StoredMessage>>,
}

impl MessageStore {
    /// Records a message; returns its ids and whether its `messageId` was seen before (then the ids
    /// are those first assigned). A message without a `messageId` is always new.
    pub fn record(&self, integration_id: &str, message_id: Option<&str>) -> (StoredMessage, bool) {
        let fresh = || StoredMessage {
            id: Uuid::new_v4().simple().to_string(),
            conversation_id: Uuid::new_v4().to_string(),
        };
        let Some(message_id) = message_id else {
            return (fresh(), false);
        };
        let mut map = self.by_message_id.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (integration_id.to_owned(), message_id.to_owned());
        if let Some(existing) = map.get(&key) {
            return (existing.clone(), true);
        }
        let stored = fresh();
        map.insert(key, stored.clone());
        (stored, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_message_id_same_ids() {
        let store = MessageStore::default();
        let (a, dup_a) = store.record("i", Some("m1"));
        let (b, dup_b) = store.record("i", Some("m1"));
        let (c, _) = store.record("i", Some("m2"));
        let (d, dup_d) = store.record("other", Some("m1"));
        assert!(!dup_a && dup_b && !dup_d);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(!store.record("i", None).1);
    }
}

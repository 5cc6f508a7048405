//! Fuzzes what the worker does with an untrusted message body before anything else: the strict
//! decode + validate (`request::validate`, DESIGN §2) and the in-flight duplicate key the consumer
//! derives from a valid request. Neither may panic, overflow the stack or hang, whatever the bytes;
//! an accepted request must obey the contract's limits.

#![no_main]

use guest_session_worker::{
    pipeline::inflight::RequestKey,
    request::{MAX_BODY_BYTES, ValidationPolicy, validate},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let policy = ValidationPolicy::default();
    match validate(body, &policy) {
        Ok(request) => {
            assert!(body.len() <= MAX_BODY_BYTES, "accepted a body over the size limit");
            let id = request.request_id();
            assert!(
                !id.is_empty() && id.chars().count() <= 128,
                "accepted request_id {id:?}"
            );
            assert!(request.consent().data_processing, "accepted a request without consent");
            // The key for duplicate suppression is built from the validated request.
            let key = RequestKey::new(id, body);
            assert_eq!(key.request_id(), id);
        }
        Err(rejection) => {
            // The reason is one of the contract's; its label is what lands in `x-error-kind`.
            assert!(!rejection.reason.as_str().is_empty());
        }
    }
});

//! The Genesys client and simulator set-up shared by the client test binaries.

use std::time::Duration;

use guest_session_worker::genesys::{GenesysClient, GenesysConfig};
use guest_session_worker::request::{ValidatedRequest, ValidationPolicy, validate};
use guest_session_worker::sim::{self, RunningSim, SimConfig};

pub const GUEST_ID: &str = "guest_a8f3c91e-4b2d";
pub const DISPLAY_NAME: &str = "Zebulon Quixote";

pub fn request(request_id: &str) -> ValidatedRequest {
    let body = serde_json::json!({
        "request_id": request_id,
        "guest_id": GUEST_ID,
        "display_name": DISPLAY_NAME,
        "attributes": { "source": "web_portal", "device_type": "desktop" },
        "consent": { "data_processing": true, "marketing": false },
        "routing": { "queue": "Web Support", "skills": ["web_support"], "language": "en", "priority": 1 },
        "initial_message": "Hi, I have a question about my order"
    });
    validate(body.to_string().as_bytes(), &ValidationPolicy::default()).expect("a valid request")
}

pub fn unique_request() -> ValidatedRequest {
    request(&format!("req-{}", uuid::Uuid::new_v4().simple()))
}

/// A fast client config against `sim`: generous pacing, short backoff, 30 s budget.
pub fn config_for(sim: &RunningSim, sim_config: &SimConfig) -> GenesysConfig {
    let mut config = GenesysConfig::for_simulator(
        &sim.base_url(),
        &sim_config.client_id,
        &sim_config.client_secret,
        &sim_config.integration_id,
    );
    config.rate_limit_per_minute = 60_000;
    config.retry_budget = Duration::from_secs(30);
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    config
}

pub async fn start(sim_config: SimConfig) -> (RunningSim, GenesysClient) {
    let sim = sim::spawn(sim_config.clone()).await.expect("simulator starts");
    let client = GenesysClient::new(config_for(&sim, &sim_config)).expect("client builds");
    (sim, client)
}

pub fn roomy_sim() -> SimConfig {
    SimConfig {
        quota_per_minute: 100_000,
        ..SimConfig::for_tests()
    }
}

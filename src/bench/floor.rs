//! The *floor* of `bench perf`: the least any implementation of the contract must make the broker,
//! the HTTP stack and the simulator do per request, measured on the same machine as the worker.
//!
//! A bare loop in this process, with no validation, retries, pacing, tracing or metrics: consume a
//! request (same queue, prefetch and backlog as the throughput scenario), POST one Open Messaging inbound message to the simulator, publish the `session.created` event
//! (CRM topic exchange, mandatory, confirmed), then publish an audit record (confirmed), then ack —
//! the broker work and the HTTP round trip the contract asks of every request, and nothing else.
//! The event and the audit record carry the contract's fields and properties (the pseudonym is a
//! real HMAC), so the broker stores and routes what it would for the worker.
//! Its rate against the ceiling's is the most a worker's ratio could be on this machine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{BenchError, Lab, cpu, spawn_sim, unique_prefix};
use crate::{
    amqp::{Outgoing, Publisher, connect, topology::EVENT_ROUTING_KEY},
    audit::{AuditOutcome, AuditRecord, Pseudonymizer},
    genesys::auth::{AccessToken, TokenProvider},
    pipeline::json_properties,
    sim::SimConfig,
};

/// Everything one request of the loop needs.
struct Target {
    http: reqwest::Client,
    url: reqwest::Url,
    token: AccessToken,
    publisher: Publisher,
    crm_exchange: String,
    audit_exchange: String,
    pseudonymizer: Pseudonymizer,
}

/// Moves `backlog` requests through the bare loop with `prefetch` in flight; returns req/s and the
/// CPU per request (this process holds the loop and the simulator).
pub async fn floor(
    amqp_url: &str,
    name_prefix: &str,
    backlog: usize,
    prefetch: u16,
    sim_config: SimConfig,
) -> Result<(f64, cpu::Share), BenchError> {
    let sim = spawn_sim(sim_config.clone()).await?;
    let prefix = unique_prefix(name_prefix, "floor");
    let lab = Lab::open(amqp_url, &prefix).await?;
    let outcomes = lab.observe_queued().await?;
    lab.enqueue(backlog).await?;
    let result = async {
        let connection = connect(amqp_url, "guest-session-worker bench floor").await?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let target = Arc::new(Target {
            token: TokenProvider::new(
                reqwest::Client::new(),
                &sim.base_url(),
                sim_config.client_id.clone(),
                sim_config.client_secret.clone().into(),
            )
            .token()
            .await
            .map_err(|e| BenchError::Floor(e.to_string()))?,
            http: reqwest::Client::new(),
            url: crate::genesys::open_messaging::url(&sim.base_url(), &sim_config.integration_id)
                .map_err(BenchError::Floor)?,
            publisher: Publisher::open(&connection, 2).await?,
            crm_exchange: lab.topology.crm_exchange.clone(),
            audit_exchange: lab.topology.audit_exchange.clone(),
            pseudonymizer: Pseudonymizer::new(uuid::Uuid::new_v4().to_string().into()),
        });
        let mut consumer = channel
            .basic_consume(
                lab.topology.request_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let failed = Arc::new(Failures::default());
        let broker = cpu::local_broker_pid();
        let cpu_before = cpu::Snapshot::now(broker);
        let started = Instant::now();
        for consumed in 0..backlog {
            failed.check()?;
            let Some(Ok(delivery)) = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .ok()
                .flatten()
            else {
                // A failed request holds its delivery unacked, which can be what stalled the loop.
                failed.check()?;
                return Err(BenchError::Timeout(format!(
                    "the floor loop stalled after {} deliveries, {} events",
                    consumed,
                    outcomes.created.get()
                )));
            };
            let (target, failed) = (Arc::clone(&target), Arc::clone(&failed));
            tokio::spawn(async move {
                let handled = match handle(&target, &delivery.data).await {
                    Ok(()) => delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(BenchError::from),
                    Err(error) => Err(error),
                };
                if let Err(error) = handled {
                    failed.record(error);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while outcomes.created.get() < backlog as u64 {
            failed.check()?;
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!(
                    "the floor loop created {} of {backlog} sessions",
                    outcomes.created.get()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rate = backlog as f64 / started.elapsed().as_secs_f64();
        let share = cpu::Snapshot::now(broker).share_since(&cpu_before, backlog);
        let _ = connection.close(200, "bench done".into()).await;
        Ok((rate, share))
    }
    .await;
    lab.close().await;
    sim.shutdown().await;
    result
}

/// The first failure of any request; the loop stops on it (a stuck request would stall it).
#[derive(Default)]
struct Failures(Mutex<Option<BenchError>>);

impl Failures {
    fn record(&self, error: BenchError) {
        if let Ok(mut first) = self.0.lock() {
            first.get_or_insert(error);
        }
    }

    fn check(&self) -> Result<(), BenchError> {
        match self.0.lock().ok().and_then(|mut first| first.take()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// One request: the Genesys call, then the event, then the audit record, each confirmed.
async fn handle(target: &Target, body: &[u8]) -> Result<(), BenchError> {
    let request: Value = serde_json::from_slice(body).map_err(|e| BenchError::Floor(e.to_string()))?;
    let (request_id, guest_id) = (&request["request_id"], &request["guest_id"]);
    // Open Messaging custom attributes are strings.
    let attributes: serde_json::Map<String, Value> = request["attributes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            (key.clone(), Value::String(text))
        })
        .collect();
    let inbound = json!({
        "channel": {
            "messageId": request_id,
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "from": { "id": guest_id, "idType": "Opaque", "nickname": request["display_name"] },
            "metadata": { "customAttributes": attributes },
        },
        "text": request["initial_message"],
    });
    let response = target
        .http
        .post(target.url.clone())
        .bearer_auth(target.token.secret().expose_secret())
        .json(&inbound)
        .send()
        .await
        .map_err(|e| BenchError::Floor(e.to_string()))?;
    let status = response.status();
    let created: Value = response.json().await.map_err(|e| BenchError::Floor(e.to_string()))?;
    if !status.is_success() {
        return Err(BenchError::Floor(format!("the simulator answered {status}")));
    }
    // The contract's messages (DESIGN §4, §5), field for field, so the broker stores and routes
    // what it would for the worker.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let event_id = uuid::Uuid::new_v4().to_string();
    let event = json!({
        "event_id": event_id,
        "event_type": "session.created",
        "occurred_at": now,
        "request_id": request_id,
        "guest_id": guest_id,
        "session": {
            "api": "open_messaging",
            "conversation_id": created["conversationId"],
            "message_id": created["id"],
        },
        "routing": request["routing"],
        "attributes": request["attributes"],
        "consent": {
            "data_processing": request["consent"]["data_processing"],
            "marketing": request["consent"]["marketing"],
            "recorded_at": now,
        },
        "latency_ms": 0,
        "attempts": 1,
    });
    target
        .publisher
        .publish(message(
            &target.crm_exchange,
            EVENT_ROUTING_KEY,
            &event,
            event_id,
            request_id.as_str(),
            true,
        ))
        .await?;
    let audit = AuditRecord {
        timestamp: now,
        request_id: request_id.as_str().map(str::to_string),
        guest_ref: guest_id.as_str().map(|g| target.pseudonymizer.guest_ref(g)),
        outcome: AuditOutcome::Created,
        reason: None,
        latency_ms: 0,
        attempts: 1,
        routing_success: true,
        validation_passed: true,
        consent_data_processing: request["consent"]["data_processing"].as_bool(),
        consent_marketing: request["consent"]["marketing"].as_bool(),
        pii_blocked: false,
        privacy_compliant: true,
        trace_id: None,
    };
    target
        .publisher
        .publish(message(
            &target.audit_exchange,
            "",
            &audit,
            uuid::Uuid::new_v4().to_string(),
            request_id.as_str(),
            false,
        ))
        .await?;
    Ok(())
}

fn message(
    exchange: &str,
    routing_key: &str,
    body: &impl serde::Serialize,
    message_id: String,
    request_id: Option<&str>,
    mandatory: bool,
) -> Outgoing {
    Outgoing {
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        payload: serde_json::to_vec(body).unwrap_or_default(),
        properties: json_properties(message_id, request_id),
        mandatory,
    }
}

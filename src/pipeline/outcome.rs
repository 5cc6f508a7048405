//! What became of one request: outcomes are data, so the consumer, metrics, audit and tests all
//! read the same value.

use crate::request::RejectReason;

/// Dead-letter reason for a Genesys refusal (DESIGN §3).
pub const GENESYS_REJECTED: &str = "genesys_rejected";
/// Dead-letter reason when transient failures outlasted the retry budget.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// Dead-letter reason when the session was created but no queue is bound to the CRM exchange, so
/// the event could not be delivered anywhere (an addition to DESIGN §5; replay once bound).
pub const EVENT_UNROUTABLE: &str = "event_unroutable";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Session created, event (and audit, and reply) confirmed by the broker.
    Created { attempts: u32 },
    /// Refused by validation; dead-lettered.
    Rejected { reason: RejectReason },
    /// Genesys refused it or the retry budget ran out (or the event was unroutable); dead-lettered.
    Failed { reason: &'static str, attempts: u32 },
}

impl Outcome {
    /// `created`, `rejected` or `failed`: the metric and audit label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Created { .. } => "created",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed { .. } => "failed",
        }
    }

    /// The dead-letter reason (`x-error-kind`), or `None` for a created session.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Created { .. } => None,
            Outcome::Rejected { reason } => Some(reason.as_str()),
            Outcome::Failed { reason, .. } => Some(reason),
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            Outcome::Created { attempts } | Outcome::Failed { attempts, .. } => *attempts,
            Outcome::Rejected { .. } => 0,
        }
    }
}

/// What the consumer must do with the delivery once processing is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Every publish for the request is confirmed: ack.
    Ack(Outcome),
    /// A publish was nacked or its channel died: do not ack; requeue so the request is retried.
    Requeue { cause: String },
}

//! Exchange and queue names (DESIGN §2, §4, §5), every one behind `AMQP_NAME_PREFIX`, and their
//! idempotent declaration.

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString},
};

pub const REQUEST_ROUTING_KEY: &str = "session.request";
pub const EVENT_ROUTING_KEY: &str = "session.created";
/// Default poison-message guard: after this many redeliveries the broker dead-letters the message.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;
/// `x-delivery-limit` of the dead-letter queue: in effect none. RabbitMQ 4 gives quorum queues a
/// limit of 20 by default, and the dead queue has no dead-letter exchange of its own, so a dead
/// letter returned that often (`dead-letters list` returns what it reads by closing its channel)
/// would be dropped. An explicit value is valid from RabbitMQ 3.10 on.
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000;

/// Declaration settings that are not names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyOptions {
    pub delivery_limit: u32,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }
}

/// The names of everything the worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub request_exchange: String,
    pub request_queue: String,
    pub crm_exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub audit_exchange: String,
    pub audit_queue: String,
    pub options: TopologyOptions,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self::with_options(prefix, TopologyOptions::default())
    }

    pub fn with_options(prefix: &str, options: TopologyOptions) -> Self {
        let name = |base: &str| format!("{prefix}{base}");
        Self {
            request_exchange: name("guest-sessions"),
            request_queue: name("guest-sessions.requests"),
            crm_exchange: name("crm-sync"),
            dead_letter_exchange: name("guest-sessions.dlx"),
            dead_letter_queue: name("guest-sessions.dead"),
            audit_exchange: name("guest-sessions.audit"),
            audit_queue: name("guest-sessions.audit"),
            options,
        }
    }

    /// Declares every exchange, queue and binding on a channel of its own. Safe to repeat: it is
    /// what a worker does on every (re)connect. An exchange or the request queue that already
    /// exists with another type or other arguments is an operator error that the broker reports
    /// as PRECONDITION_FAILED. The dead-letter and audit queues are only ever written to by the
    /// worker, so one that an operator created beforehand as a plain classic queue is used as it
    /// is; any other difference is refused too.
    pub async fn declare(&self, connection: &Connection) -> Result<(), lapin::Error> {
        let mut channel = connection.create_channel().await?;
        self.declare_on(&mut channel, connection).await?;
        // The declarations are done; an error closing the channel changes nothing about them.
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }

    async fn declare_on(&self, channel: &mut Channel, connection: &Connection) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue_opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.request_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.crm_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.audit_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;

        let mut request_args = quorum();
        request_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
        );
        request_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.options.delivery_limit)),
        );
        channel
            .queue_declare(self.request_queue.as_str().into(), queue_opts, request_args)
            .await?;
        let mut dead_letter_args = quorum();
        dead_letter_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
        );
        for (queue, args) in [
            (&self.dead_letter_queue, dead_letter_args),
            (&self.audit_queue, quorum()),
        ] {
            match channel.queue_declare(queue.as_str().into(), queue_opts, args).await {
                Ok(_) => {}
                Err(error) if is_precondition_failed(&error) => {
                    // The refusal closed the channel. Only a plain classic queue is taken as it
                    // is: a quorum dead queue without the worker's delivery limit would drop dead
                    // letters after twenty listings, so any other difference stays an error.
                    *channel = connection.create_channel().await?;
                    if channel
                        .queue_declare(queue.as_str().into(), queue_opts, classic())
                        .await
                        .is_err()
                    {
                        return Err(error);
                    }
                    tracing::warn!(
                        queue = queue.as_str(),
                        "the queue exists as a classic queue, not the quorum queue the worker declares; using it as it is"
                    );
                }
                Err(error) => return Err(error),
            }
        }

        let bind = |queue: &str, exchange: &str, key: &str| {
            channel.queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
        };
        bind(&self.request_queue, &self.request_exchange, REQUEST_ROUTING_KEY).await?;
        bind(&self.dead_letter_queue, &self.dead_letter_exchange, "").await?;
        bind(&self.audit_queue, &self.audit_exchange, "").await?;
        Ok(())
    }

    /// Declares `queue` (durable, quorum, as a CRM consumer's own queue) and binds it to the CRM
    /// exchange for `session.created`, so events are routed where no CRM consumer has bound a
    /// queue yet (`AMQP_CRM_QUEUE`, for the compose stack). Call after [`Topology::declare`].
    pub async fn declare_crm_queue(&self, connection: &Connection, queue: &str) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel.queue_declare(queue.into(), durable, quorum()).await?;
        channel
            .queue_bind(
                queue.into(),
                self.crm_exchange.as_str().into(),
                EVENT_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "CRM queue declared".into()).await;
        Ok(())
    }

    /// Removes everything [`Topology::declare`] created (tests clean up after themselves).
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for queue in [&self.request_queue, &self.dead_letter_queue, &self.audit_queue] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            &self.request_exchange,
            &self.crm_exchange,
            &self.dead_letter_exchange,
            &self.audit_exchange,
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// A passive declare of `queue`: its depth and consumer count now. It never creates the queue
/// (an absent one is a channel error).
pub async fn inspect(channel: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
}

/// The broker refused a declaration because the entity exists with another type or arguments.
pub fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Arguments that name a classic queue (the broker's default kind).
fn classic() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    args
}

/// Arguments that make a declared queue a quorum queue.
pub fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    args
}

#[cfg(test)]
mod tests {
    use super::Topology;

    #[test]
    fn every_name_carries_the_prefix() {
        let t = Topology::new("t1.");
        for name in [
            &t.request_exchange,
            &t.request_queue,
            &t.crm_exchange,
            &t.dead_letter_exchange,
            &t.dead_letter_queue,
            &t.audit_exchange,
            &t.audit_queue,
        ] {
            assert!(name.starts_with("t1."), "{name}");
        }
        assert_eq!(Topology::new("").request_queue, "guest-sessions.requests");
    }
}

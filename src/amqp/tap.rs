//! A temporary observer of an exchange: an exclusive, auto-deleted queue bound to it and a consumer
//! on that queue. The demo, the benchmarks and the examples watch events and dead letters this way,
//! as a CRM consumer or an operator would; the queue disappears with the channel.

use lapin::{
    Channel, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};

/// Binds a fresh exclusive queue to `exchange` with `routing_key` and consumes it. With `no_ack`
/// the broker forgets each message once delivered (counting observers); without it the caller acks.
pub async fn tap(channel: &Channel, exchange: &str, routing_key: &str, no_ack: bool) -> Result<Consumer, lapin::Error> {
    let queue = bind_exclusive(channel, exchange, routing_key).await?;
    channel
        .basic_consume(
            queue,
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Declares a fresh server-named, exclusive, auto-deleted queue (only this connection reads it,
/// and it vanishes with it, e.g. for `reply_to`); returns its name.
pub async fn declare_exclusive(channel: &Channel) -> Result<ShortString, lapin::Error> {
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    Ok(queue.name().clone())
}

/// Declares a fresh exclusive, auto-deleted queue bound to `exchange` with `routing_key`; returns
/// its name.
pub async fn bind_exclusive(channel: &Channel, exchange: &str, routing_key: &str) -> Result<ShortString, lapin::Error> {
    let queue = declare_exclusive(channel).await?;
    channel
        .queue_bind(
            queue.clone(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(queue)
}

//! The injected latency, held to within tens of microseconds instead of tokio's millisecond.
//!
//! tokio's timer wheel ticks every millisecond: a sleep ends anywhere in the millisecond after its
//! deadline. For the simulator's latency that jitter is an error of the instrument, and the
//! benchmark's added-latency figure (event received − request published − the configured latency)
//! would bill it to the worker. One thread sleeps until the earliest deadline on the operating
//! system's high-resolution timer and wakes every request that is due.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{Condvar, Mutex, OnceLock, PoisonError},
    time::Instant,
};

use tokio::sync::oneshot;

/// A request waiting for its deadline; ordered by deadline (those due together wake together).
struct Waiting {
    deadline: Instant,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.deadline.cmp(&other.deadline)
    }
}

#[derive(Default)]
struct Timer {
    waiting: Mutex<BinaryHeap<Reverse<Waiting>>>,
    /// Signalled when a new earliest deadline arrives.
    earlier: Condvar,
}

/// The process's timer thread, started on first use; `None` if no thread could be started.
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("sim-latency".into())
            .spawn(move || run(timer))
            .ok()
            .map(|_| timer)
    })
}

fn run(timer: &Timer) {
    let mut queue = timer.waiting.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse(w)| w.deadline <= now) {
            if let Some(Reverse(due)) = queue.pop() {
                // The request may have gone (client disconnected); nothing to wake then.
                let _ = due.wake.send(());
            }
        }
        queue = match queue.peek().map(|Reverse(w)| w.deadline - now) {
            Some(wait) => {
                timer
                    .earlier
                    .wait_timeout(queue, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => timer.earlier.wait(queue).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// Waits until `deadline`, to within the operating system's timer precision.
pub async fn sleep_until(deadline: tokio::time::Instant) {
    let deadline = deadline.into_std();
    if deadline <= Instant::now() {
        return;
    }
    let Some(timer) = timer() else {
        tokio::time::sleep_until(deadline.into()).await;
        return;
    };
    let (wake, woken) = oneshot::channel();
    {
        let mut queue = timer.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = queue.peek().is_none_or(|Reverse(w)| deadline < w.deadline);
        queue.push(Reverse(Waiting { deadline, wake }));
        if earliest {
            timer.earlier.notify_one();
        }
    }
    let _ = woken.await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::sleep_until;

    #[tokio::test]
    async fn wakes_each_sleeper_at_its_deadline_not_a_millisecond_later() {
        let start = tokio::time::Instant::now();
        let delays = [7_300u64, 2_100, 5_600, 2_100, 11_900];
        let sleepers = delays.map(|us| {
            tokio::spawn(async move {
                let deadline = start + Duration::from_micros(us);
                sleep_until(deadline).await;
                let now = tokio::time::Instant::now();
                (now >= deadline, now.duration_since(deadline))
            })
        });
        for sleeper in sleepers {
            let (not_early, late) = sleeper.await.expect("sleeper");
            assert!(not_early, "woke before its deadline");
            // Generous for a loaded CI machine; tokio's own timer is up to 1 ms late by design.
            assert!(late < Duration::from_millis(5), "woke {late:?} late");
        }
        // A deadline already past returns at once.
        sleep_until(start).await;
    }
}

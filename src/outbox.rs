//! A peer's outbox: the bounded queue between the hub (every channel the
//! peer is in pushes into it) and the peer's writer task (which takes
//! everything queued at once and writes it out in one flush).
//!
//! Why not tokio's bounded mpsc: a fan-out pushes one message into a
//! thousand outboxes per publish. Here a push is a short uncontended lock and
//! a `Vec::push`, the writer is woken only when its queue goes from empty to
//! non-empty (not once per message), and it takes the whole queue by swapping
//! two `Vec`s. An idle outbox holds no more than a few slots, where tokio's
//! channel allocates a block of 32 up front for every idle connection.
//! A busy one keeps the capacity its bursts grew to, so a fan-out does not
//! regrow both `Vec`s push by push on every batch; the writer gives it back
//! with [`OutboxReceiver::release_idle`] on a timer.
//!
//! The bound counts queued messages and their bytes; the batch the writer is
//! writing is not counted, so a peer holds at most `bound` queued messages
//! (or `max_bytes` of them) plus one batch. A burst the node sends as one
//! reply ([`Outbox::try_send_all`]) counts as one message and all its bytes.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// Capacity an idle queue may keep; more is freed by `release_idle`.
const IDLE_CAPACITY: usize = 4;

/// Creates an outbox holding at most `bound` queued messages and
/// `max_bytes` of them (0: no byte bound). One message is always accepted
/// into an empty queue, whatever its size.
pub fn outbox(bound: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        bound: bound.max(1),
        max_bytes: if max_bytes == 0 {
            usize::MAX
        } else {
            max_bytes
        },
        senders: AtomicUsize::new(1),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver { shared },
    )
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("outbox full")]
    Full,
    #[error("outbox closed")]
    Closed,
}

struct Shared {
    state: Mutex<State>,
    bound: usize,
    max_bytes: usize,
    senders: AtomicUsize,
}

#[derive(Default)]
struct State {
    queue: Vec<Bytes>,
    /// Messages in `queue` as the bound counts them: a reply sent with
    /// `try_send_all` is one.
    count: usize,
    /// Bytes in `queue`.
    bytes: usize,
    waker: Option<Waker>,
    receiver_gone: bool,
    senders_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; a poisoned one is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side; cloned into every channel the peer joins.
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues `msg`, or says why not (full: the peer is too slow; closed: its
    /// writer is gone).
    pub fn try_send(&self, msg: Bytes) -> Result<(), SendError> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(SendError::Closed);
        }
        let bytes = state.bytes.saturating_add(msg.len());
        if state.count >= self.shared.bound
            || (bytes > self.shared.max_bytes && !state.queue.is_empty())
        {
            return Err(SendError::Full);
        }
        state.bytes = bytes;
        state.count += 1;
        state.queue.push(msg);
        wake_if_first(state, 1);
        Ok(())
    }

    /// Queues `msgs` as one message: all of them or none. They count as one
    /// against the bound and with all their bytes against the byte bound,
    /// which they must fit even in an empty queue: the node's reply to a
    /// joiner (every member's state) is as long as the channel is big, and
    /// the message bound is for what a peer falls behind on, not for that.
    pub fn try_send_all(&self, msgs: &[Bytes]) -> Result<(), SendError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(SendError::Closed);
        }
        let size = msgs.iter().map(Bytes::len).fold(0, usize::saturating_add);
        let bytes = state.bytes.saturating_add(size);
        if state.count >= self.shared.bound || bytes > self.shared.max_bytes {
            return Err(SendError::Full);
        }
        state.bytes = bytes;
        state.count += 1;
        state.queue.extend_from_slice(msgs);
        wake_if_first(state, msgs.len());
        Ok(())
    }
}

/// Wakes the writer if the `added` messages just queued are all there is:
/// a queue that was not empty means it was woken already.
fn wake_if_first(mut state: MutexGuard<'_, State>, added: usize) {
    let waker = if state.queue.len() == added {
        state.waker.take()
    } else {
        None
    };
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut state = self.shared.lock();
        state.senders_gone = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The writer's side.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl OutboxReceiver {
    /// Waits until something is queued and moves all of it to the end of
    /// `batch`. `false`: every sender is gone and nothing is left.
    pub async fn recv(&mut self, batch: &mut Vec<Bytes>) -> bool {
        poll_fn(|cx| self.poll_recv(cx, batch)).await
    }

    /// Polls [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>, batch: &mut Vec<Bytes>) -> Poll<bool> {
        let mut state = self.shared.lock();
        if take_all(&mut state, batch) {
            return Poll::Ready(true);
        }
        if state.senders_gone {
            return Poll::Ready(false);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Frees the queue's and `batch`'s buffers beyond a few slots, if nothing
    /// is queued and `batch` is empty: call it now and then (the writer's
    /// keepalive tick), so a connection that went quiet after a burst holds
    /// what an idle one does.
    pub fn release_idle(&mut self, batch: &mut Vec<Bytes>) {
        if !batch.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        if !state.queue.is_empty() {
            return;
        }
        if state.queue.capacity() > IDLE_CAPACITY {
            state.queue = Vec::new();
        }
        drop(state);
        if batch.capacity() > IDLE_CAPACITY {
            *batch = Vec::new();
        }
    }

    /// Moves what is queued now to the end of `batch`, without waiting.
    /// Returns whether there was anything.
    pub fn try_recv(&mut self, batch: &mut Vec<Bytes>) -> bool {
        take_all(&mut self.shared.lock(), batch)
    }

    /// The oldest queued message, for tests that look at one at a time.
    #[cfg(test)]
    pub(crate) fn try_recv_one(&mut self) -> Option<Bytes> {
        let mut state = self.shared.lock();
        let msg = (!state.queue.is_empty()).then(|| state.queue.remove(0))?;
        state.bytes -= msg.len();
        state.count = state.count.min(state.queue.len());
        Some(msg)
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.waker = None;
        let queued = std::mem::take(&mut state.queue);
        drop(state);
        drop(queued);
    }
}

/// Moves `queue` into `batch`: a swap when `batch` is empty (no copy, and the
/// queue keeps `batch`'s buffer for what comes next).
fn take_all(state: &mut State, batch: &mut Vec<Bytes>) -> bool {
    state.bytes = 0;
    state.count = 0;
    let queue = &mut state.queue;
    if queue.is_empty() {
        return false;
    }
    if batch.is_empty() {
        std::mem::swap(queue, batch);
    } else {
        batch.append(queue);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(i: u8) -> Bytes {
        Bytes::from(vec![i])
    }

    #[test]
    fn keeps_order_and_bound() {
        let (tx, mut rx) = outbox(3, 0);
        for i in 0..3 {
            tx.try_send(msg(i)).unwrap();
        }
        assert_eq!(tx.try_send(msg(9)), Err(SendError::Full));
        let mut batch = Vec::new();
        assert!(rx.try_recv(&mut batch));
        assert_eq!(batch, [msg(0), msg(1), msg(2)]);
        // Taken out, the queue has room again; a second take appends.
        tx.try_send(msg(3)).unwrap();
        assert!(rx.try_recv(&mut batch));
        assert_eq!(batch.len(), 4);
        assert!(!rx.try_recv(&mut batch));
    }

    #[test]
    fn bytes_are_bounded_too_but_one_message_always_fits() {
        let (tx, mut rx) = outbox(100, 10);
        tx.try_send(Bytes::from(vec![0; 25])).unwrap();
        assert_eq!(tx.try_send(msg(1)), Err(SendError::Full));
        let mut batch = Vec::new();
        assert!(rx.try_recv(&mut batch));
        for i in 0..10 {
            tx.try_send(msg(i)).unwrap();
        }
        assert_eq!(tx.try_send(msg(10)), Err(SendError::Full));
        batch.clear();
        assert!(rx.try_recv(&mut batch));
        assert_eq!(batch.len(), 10);
        tx.try_send(Bytes::from(vec![0; 10])).unwrap();
    }

    #[test]
    fn a_reply_counts_as_one_message_and_all_its_bytes() {
        let (tx, mut rx) = outbox(2, 10);
        tx.try_send(msg(0)).unwrap();
        // Five frames, one message: past the message bound, within bytes.
        let reply: Vec<Bytes> = (1..6).map(msg).collect();
        tx.try_send_all(&reply).unwrap();
        assert_eq!(
            tx.try_send(msg(6)),
            Err(SendError::Full),
            "two messages queued"
        );
        let mut batch = Vec::new();
        assert!(rx.try_recv(&mut batch));
        assert_eq!(batch, (0..6).map(msg).collect::<Vec<_>>());
        // Over the byte bound it is refused whole, even into an empty queue.
        let big: Vec<Bytes> = (0..11).map(msg).collect();
        assert_eq!(tx.try_send_all(&big), Err(SendError::Full));
        assert!(!rx.try_recv(&mut batch));
        tx.try_send_all(&big[..10]).unwrap();
        drop(rx);
        assert_eq!(tx.try_send_all(&big[..1]), Err(SendError::Closed));
    }

    #[test]
    fn closed_once_the_receiver_is_gone() {
        let (tx, rx) = outbox(3, 0);
        tx.try_send(msg(0)).unwrap();
        drop(rx);
        assert_eq!(tx.try_send(msg(1)), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = outbox(8, 0);
        let tx2 = tx.clone();
        let sender = tokio::spawn(async move {
            for i in 0..5 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                tx2.try_send(msg(i)).unwrap();
            }
        });
        let mut got = Vec::new();
        while got.len() < 5 {
            let mut batch = Vec::new();
            assert!(rx.recv(&mut batch).await);
            got.extend(batch);
        }
        assert_eq!(got, (0..5).map(msg).collect::<Vec<_>>());
        sender.await.unwrap();
        tx.try_send(msg(5)).unwrap();
        drop(tx);
        let mut batch = Vec::new();
        // What was queued still comes out, then the end.
        assert!(rx.recv(&mut batch).await);
        assert_eq!(batch, [msg(5)]);
        batch.clear();
        assert!(!rx.recv(&mut batch).await);
    }

    #[tokio::test]
    async fn a_busy_outbox_keeps_its_buffers_until_released_idle() {
        let (tx, mut rx) = outbox(1024, 0);
        let mut batch = Vec::new();
        for round in 0..2 {
            for i in 0..100 {
                tx.try_send(msg(i)).unwrap();
            }
            assert!(rx.recv(&mut batch).await);
            assert_eq!(batch.len(), 100, "round {round}");
            batch.clear();
            let waited = tokio::time::timeout(Duration::from_millis(10), rx.recv(&mut batch)).await;
            assert!(waited.is_err(), "nothing queued: recv waits");
            // The buffers survive the wait: the next burst reuses them
            // (the queue and the batch swap buffers, so both have one from
            // the second burst on).
            assert!(batch.capacity() >= 100);
            if round > 0 {
                assert!(rx.shared.lock().queue.capacity() >= 100);
            }
        }
        // Not while something is queued or unwritten.
        tx.try_send(msg(1)).unwrap();
        rx.release_idle(&mut batch);
        assert!(rx.shared.lock().queue.capacity() >= 100);
        assert!(rx.try_recv(&mut batch));
        rx.release_idle(&mut batch);
        assert!(batch.capacity() >= 100);
        batch.clear();
        rx.release_idle(&mut batch);
        assert_eq!(batch.capacity(), 0);
        assert_eq!(rx.shared.lock().queue.capacity(), 0);
    }
}

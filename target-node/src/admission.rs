//! Admission control of a target-node's sessions: at most `max_sessions` held, their KV caches
//! within `kv_memory` bytes (each session reserves what its prompt, its `max_tokens` and one
//! block can fill), and at most `max_waiting` requests waiting for room, served in arrival order
//! (a request never passes one that came before it, so none starves). A request that finds the
//! queue full, or waits past `max_wait`, is refused with RESOURCE_EXHAUSTED and a retry hint.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tonic::Status;

/// The bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_sessions: usize,
    /// Bytes of KV cache all sessions may reserve; `None`: no bound.
    pub kv_memory: Option<u64>,
    pub max_waiting: usize,
    pub max_wait: Duration,
}

#[derive(Default)]
struct State {
    sessions: usize,
    kv: u64,
    /// Tickets of the waiting requests, oldest first.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
    changed: Notify,
}

/// A held session's share; dropping it gives the room back.
pub struct Reservation {
    admission: Arc<Admission>,
    kv: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = self.admission.state.lock().unwrap();
        st.sessions -= 1;
        st.kv -= self.kv;
        drop(st);
        self.admission.changed.notify_waiters();
    }
}

/// The status of a refusal: RESOURCE_EXHAUSTED, with the seconds after which to retry in the
/// `retry-after` metadata (as HTTP's Retry-After).
fn exhausted(msg: String, retry_after_s: u64) -> Status {
    let mut s = Status::resource_exhausted(format!("{msg}; retry in {retry_after_s} s"));
    s.metadata_mut().insert(
        "retry-after",
        retry_after_s.to_string().parse().expect("digits"),
    );
    s
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sessions held now.
    pub fn sessions(&self) -> usize {
        self.state.lock().unwrap().sessions
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    fn fits(&self, st: &State, kv: u64) -> bool {
        st.sessions < self.limits.max_sessions
            && self
                .limits
                .kv_memory
                .is_none_or(|limit| st.kv + kv <= limit)
    }

    /// Reserves room for a session of `kv` bytes of cache, waiting in line for it when the
    /// node is full.
    pub async fn admit(self: &Arc<Self>, kv: u64) -> Result<Reservation, Status> {
        if let Some(limit) = self.limits.kv_memory {
            if kv > limit {
                return Err(Status::invalid_argument(format!(
                    "the session needs {} MiB of KV cache, more than the node's --kv-memory of {} MiB; lower max_tokens or shorten the prompt",
                    kv.div_ceil(1 << 20),
                    limit >> 20
                )));
            }
        }
        let ticket = {
            let mut st = self.state.lock().unwrap();
            if st.queue.is_empty() && self.fits(&st, kv) {
                return Ok(self.take(&mut st, kv));
            }
            if st.queue.len() >= self.limits.max_waiting {
                return Err(exhausted(
                    format!(
                        "the target-node is full ({} sessions held, {} requests waiting)",
                        st.sessions,
                        st.queue.len()
                    ),
                    1,
                ));
            }
            let t = st.next_ticket;
            st.next_ticket += 1;
            st.queue.push_back(t);
            t
        };
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut st = self.state.lock().unwrap();
                    if st.queue.front() == Some(&ticket) && self.fits(&st, kv) {
                        st.queue.pop_front();
                        let r = self.take(&mut st, kv);
                        drop(st);
                        // The next in line may fit too.
                        self.changed.notify_waiters();
                        return r;
                    }
                }
                notified.await;
            }
        };
        match tokio::time::timeout(self.limits.max_wait, wait).await {
            Ok(r) => Ok(r),
            Err(_) => {
                let mut st = self.state.lock().unwrap();
                st.queue.retain(|&t| t != ticket);
                drop(st);
                self.changed.notify_waiters();
                Err(exhausted(
                    format!(
                        "no room for the session after waiting {:.0} s",
                        self.limits.max_wait.as_secs_f64()
                    ),
                    self.limits.max_wait.as_secs().max(1),
                ))
            }
        }
    }

    fn take(self: &Arc<Self>, st: &mut State, kv: u64) -> Reservation {
        st.sessions += 1;
        st.kv += kv;
        Reservation {
            admission: self.clone(),
            kv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_sessions: usize, kv: Option<u64>, max_waiting: usize) -> Limits {
        Limits {
            max_sessions,
            kv_memory: kv,
            max_waiting,
            max_wait: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn waiting_requests_are_admitted_in_arrival_order_as_room_frees() {
        let a = Admission::new(limits(1, None, 4));
        let first = a.admit(10).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (a2, order) = (a.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let r = a2.admit(10).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(r);
            }));
            // Arrivals in a known order.
            while a.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(a.sessions(), 1);
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!((a.sessions(), a.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_and_a_long_wait_are_refused_with_a_retry_hint() {
        let mut l = limits(1, None, 1);
        l.max_wait = Duration::from_millis(50);
        let a = Admission::new(l);
        let _held = a.admit(1).await.unwrap();
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(1).await })
        };
        while a.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let full = a.admit(1).await.err().unwrap();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert_eq!(full.metadata().get("retry-after").unwrap(), "1");
        let late = waiter.await.unwrap().err().unwrap();
        assert_eq!(late.code(), tonic::Code::ResourceExhausted, "{late:?}");
        assert!(late.message().contains("after waiting"), "{late:?}");
        assert_eq!(a.waiting(), 0, "a request that gave up leaves the line");
    }

    #[tokio::test]
    async fn kv_memory_bounds_the_reservations() {
        let a = Admission::new(limits(10, Some(100), 0));
        let r1 = a.admit(60).await.unwrap();
        // 60 + 50 > 100 and no one may wait.
        assert_eq!(
            a.admit(50).await.err().unwrap().code(),
            tonic::Code::ResourceExhausted
        );
        let r2 = a.admit(40).await.unwrap();
        drop(r1);
        let _r3 = a.admit(50).await.unwrap();
        drop(r2);
        // More than the whole bound can never fit: a clear error, not a wait.
        assert_eq!(
            a.admit(101).await.err().unwrap().code(),
            tonic::Code::InvalidArgument
        );
    }
}

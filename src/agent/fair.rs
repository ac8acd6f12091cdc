//! A fair slot scheduler: at most `max` tasks of an agent run at once, and
//! the surplus is served round-robin across users rather than first come,
//! first served, so one user submitting a hundred tasks cannot starve the
//! others.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The slots of one agent.
pub struct FairQueue {
    /// Changes only through [`FairQueue::set_max`] (agents of remote hosts
    /// come and go); read under the state lock where it matters.
    max: AtomicUsize,
    /// A std mutex is right: it guards a few counters and queues, is never
    /// held across an await, and each critical section is a handful of
    /// pointer moves.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Slots in use.
    running: usize,
    /// Users with someone waiting, in the order they are served next.
    turn: VecDeque<String>,
    /// Each user's waiters, oldest first.
    waiting: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
}

impl State {
    /// The next waiter in round-robin order.
    fn next_waiter(&mut self) -> Option<oneshot::Sender<Permit>> {
        while let Some(user) = self.turn.pop_front() {
            let Some(queue) = self.waiting.get_mut(&user) else {
                continue;
            };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&user);
            } else {
                self.turn.push_back(user);
            }
            if waiter.is_some() {
                return waiter;
            }
        }
        None
    }

    fn queued(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

/// A held slot; dropping it hands the slot to the next waiter.
pub struct Permit {
    queue: Arc<FairQueue>,
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.queue.release();
        }
    }
}

impl FairQueue {
    /// A queue with `max` slots (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(FairQueue {
            max: AtomicUsize::new(max.max(1)),
            state: Mutex::new(State::default()),
        })
    }

    /// The number of slots.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Change the number of slots (0 holds every new task in the queue).
    /// More slots are handed to waiters at once; fewer take effect as
    /// running tasks finish.
    pub fn set_max(self: &Arc<Self>, max: usize) {
        let grow = {
            let s = self.lock();
            self.max.store(max, Ordering::Relaxed);
            max.saturating_sub(s.running)
        };
        for _ in 0..grow {
            if !self.grant_free() {
                break;
            }
        }
    }

    /// Hand a free slot to the next live waiter; false when nobody waits
    /// or no slot is free.
    fn grant_free(self: &Arc<Self>) -> bool {
        loop {
            let next = {
                let mut s = self.lock();
                if s.running >= self.max() {
                    return false;
                }
                match s.next_waiter() {
                    Some(tx) => {
                        s.running += 1;
                        tx
                    }
                    None => return false,
                }
            };
            let permit = Permit {
                queue: self.clone(),
                armed: true,
            };
            match next.send(permit) {
                Ok(()) => return true,
                // Its drop gives the slot back (and may hand it on).
                Err(unwanted) => drop(unwanted),
            }
        }
    }

    /// (running, queued) now.
    pub fn load(&self) -> (usize, usize) {
        let s = self.lock();
        (s.running, s.queued())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters
        // half-updated in a way worse than losing the node, so go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot now, if one is free and nobody waits.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut s = self.lock();
        if s.running < self.max() && s.waiting.is_empty() {
            s.running += 1;
            return Some(Permit {
                queue: self.clone(),
                armed: true,
            });
        }
        None
    }

    /// Wait for a slot on behalf of `user`. Cancel-safe: dropping the future
    /// gives up the place in the queue (or the slot, if it was just handed
    /// over).
    pub async fn acquire(self: &Arc<Self>, user: &str) -> Permit {
        let rx = {
            let mut s = self.lock();
            if s.running < self.max() && s.waiting.is_empty() {
                s.running += 1;
                return Permit {
                    queue: self.clone(),
                    armed: true,
                };
            }
            let (tx, rx) = oneshot::channel();
            match s.waiting.get_mut(user) {
                Some(q) => q.push_back(tx),
                None => {
                    s.waiting.insert(user.to_owned(), VecDeque::from([tx]));
                    s.turn.push_back(user.to_owned());
                }
            }
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The sender lives in the queue, which lives as long as `self`.
            Err(_) => unreachable!("a fair queue dropped a waiter"),
        }
    }

    /// A slot was freed: hand it to the next live waiter, or count it free.
    fn release(self: &Arc<Self>) {
        loop {
            let next = {
                let mut s = self.lock();
                // Slots were taken away meanwhile: this one goes.
                if s.running > self.max() {
                    s.running -= 1;
                    return;
                }
                match s.next_waiter() {
                    Some(tx) => tx,
                    None => {
                        s.running -= 1;
                        return;
                    }
                }
            };
            // Sent outside the lock: a failed send hands the permit back,
            // and disarming it keeps its drop from re-entering here.
            let permit = Permit {
                queue: self.clone(),
                armed: true,
            };
            match next.send(permit) {
                Ok(()) => return,
                Err(mut unwanted) => unwanted.armed = false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn ready<T>(h: &mut tokio::task::JoinHandle<T>) -> bool {
        tokio::time::timeout(Duration::from_millis(20), h)
            .await
            .is_ok()
    }

    /// Up to `max` acquire at once; the next waits until one is dropped.
    #[tokio::test]
    async fn limits_concurrency() {
        let q = FairQueue::new(2);
        let a = q.acquire("u").await;
        let _b = q.acquire("u").await;
        assert_eq!(q.load(), (2, 0));
        let q2 = q.clone();
        let mut c = tokio::spawn(async move { q2.acquire("u").await });
        assert!(!ready(&mut c).await);
        assert_eq!(q.load(), (2, 1));
        drop(a);
        let c = c.await.unwrap();
        assert_eq!(q.load(), (2, 0));
        drop(c);
        assert_eq!(q.load(), (1, 0));
    }

    /// Waiters are served round-robin across users, in order within a user.
    #[tokio::test]
    async fn serves_users_round_robin() {
        let q = FairQueue::new(1);
        let first = q.acquire("alice").await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut handles = Vec::new();
        for (user, n) in [
            ("alice", 1),
            ("alice", 2),
            ("alice", 3),
            ("bob", 1),
            ("carol", 1),
        ] {
            let q = q.clone();
            let tx = tx.clone();
            handles.push(tokio::spawn(async move {
                let p = q.acquire(user).await;
                tx.send(format!("{user}{n}")).unwrap();
                drop(p);
            }));
            // Let each enqueue in this order.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(q.load(), (1, 5));
        drop(first);
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, ["alice1", "bob1", "carol1", "alice2", "alice3"]);
        assert_eq!(q.load(), (0, 0));
    }

    /// Resizing hands new slots to waiters at once; shrinking takes effect
    /// as running tasks finish; zero slots holds everyone in the queue.
    #[tokio::test]
    async fn slots_can_be_resized() {
        let q = FairQueue::new(1);
        q.set_max(0);
        let q2 = q.clone();
        let mut a = tokio::spawn(async move { q2.acquire("u").await });
        assert!(!ready(&mut a).await);
        assert_eq!(q.load(), (0, 1));
        q.set_max(2);
        let a = a.await.unwrap();
        let b = q.acquire("u").await;
        assert_eq!(q.load(), (2, 0));
        q.set_max(1);
        let q3 = q.clone();
        let mut c = tokio::spawn(async move { q3.acquire("v").await });
        drop(a);
        assert!(!ready(&mut c).await, "still one over the new size");
        assert_eq!(q.load(), (1, 1));
        drop(b);
        let _c = c.await.unwrap();
        assert_eq!(q.load(), (1, 0));
    }

    /// A waiter that gives up does not take a slot with it.
    #[tokio::test]
    async fn abandoned_waiters_are_skipped() {
        let q = FairQueue::new(1);
        let held = q.acquire("a").await;
        let q2 = q.clone();
        let mut gone = tokio::spawn(async move { q2.acquire("b").await });
        assert!(!ready(&mut gone).await);
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(q.load(), (0, 0));
        let _again = q.acquire("c").await;
        assert_eq!(q.load(), (1, 0));
    }
}

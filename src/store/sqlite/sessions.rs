//! The writer's memory of sessions: each one's `sid`, last `seq` and
//! owner, so that an append needs no read. Bounded by what is busy, not by
//! what was ever seen: two generations, and the older one is forgotten
//! whenever the newer one fills up or the writer has been idle for
//! [`AGE`]. A forgotten session is read back (one indexed row) on its next
//! event, so forgetting never loses a `seq`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::writer::SessionSlot;

/// Sessions remembered in one generation.
const CAPACITY: usize = 8192;
/// How often an idle writer starts a new generation.
const AGE: Duration = Duration::from_secs(2);

/// Two generations of session slots.
#[derive(Debug)]
pub(super) struct Sessions {
    /// Written since the last rotation.
    now: HashMap<Uuid, SessionSlot>,
    /// Written in the generation before; moved to `now` when written again.
    old: HashMap<Uuid, SessionSlot>,
    /// When `now` last became `old`.
    rotated: Instant,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            now: HashMap::new(),
            old: HashMap::new(),
            rotated: Instant::now(),
        }
    }
}

impl Sessions {
    /// The slot of `id`, moved into the current generation, if remembered.
    pub fn get(&mut self, id: Uuid) -> Option<&mut SessionSlot> {
        if !self.now.contains_key(&id) {
            let slot = self.old.remove(&id)?;
            self.insert(id, slot);
        }
        self.now.get_mut(&id)
    }

    /// Remember a session (new, or read back).
    pub fn insert(&mut self, id: Uuid, slot: SessionSlot) {
        if self.now.len() >= CAPACITY {
            self.rotate();
        }
        self.now.insert(id, slot);
    }

    /// Forget one session.
    pub fn remove(&mut self, id: Uuid) {
        self.now.remove(&id);
        self.old.remove(&id);
    }

    /// Forget every session.
    pub fn clear(&mut self) {
        self.now.clear();
        self.old.clear();
    }

    /// Called when the writer's queue is empty: at most every [`AGE`], the
    /// sessions not written since the last time are forgotten.
    pub fn age(&mut self) {
        if self.rotated.elapsed() >= AGE {
            self.rotate();
        }
    }

    /// The current generation becomes the old one; the old one goes, its
    /// memory with it.
    fn rotate(&mut self) {
        self.old = std::mem::take(&mut self.now);
        self.rotated = Instant::now();
    }

    /// Sessions remembered (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.now.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(sid: i64) -> SessionSlot {
        SessionSlot {
            sid,
            last_seq: sid * 10,
            user_id: "u".into(),
            active: true,
            activity: 0,
        }
    }

    /// A session written again survives a rotation; one left alone for two
    /// is forgotten; a full generation rotates.
    #[test]
    fn generations_forget_what_is_not_written() {
        let mut s = Sessions::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        s.insert(a, slot(1));
        s.insert(b, slot(2));
        s.rotate();
        assert_eq!(s.get(a).map(|x| x.last_seq), Some(10));
        s.rotate();
        assert!(s.get(b).is_none());
        assert!(s.get(a).is_some());
        for i in 0..CAPACITY as i64 + 1 {
            s.insert(Uuid::new_v4(), slot(i));
        }
        assert!(s.len() <= 2 * CAPACITY);
        assert!(s.now.len() <= CAPACITY);
        s.remove(a);
        s.clear();
        assert_eq!(s.len(), 0);
    }
}

//! One task at a time per key: a lock made on first use and forgotten when
//! no task holds or waits for it, so the map holds only the keys in use.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// Locks by key, each held across awaits.
pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Weak<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::default(),
        }
    }
}

impl<K: Eq + Hash> KeyedLocks<K> {
    /// Waits for the lock of `key`; it is released when the guard drops.
    pub async fn lock(&self, key: K) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap();
            locks.retain(|_, held| held.strong_count() > 0);
            match locks.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// Keys with a lock held or waited for.
    #[cfg(test)]
    fn len(&self) -> usize {
        let mut locks = self.locks.lock().unwrap();
        locks.retain(|_, held| held.strong_count() > 0);
        locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_no_key_kept_after_release() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        // Another key is free while "a" is held.
        let b = locks.lock("b").await;
        // "a" again waits for the first holder.
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a"));
        assert!(again.await.is_err(), "a second holder of the same key");
        drop((a, b));
        let a = locks.lock("a").await;
        assert_eq!(locks.len(), 1);
        drop(a);
        assert_eq!(locks.len(), 0);
    }
}

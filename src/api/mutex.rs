//! Locking a mutex whose holder panicked.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A lock whose holder panicked is still usable: every critical section that uses this leaves
/// consistent data (SQLite rolls back an unfinished transaction; other sections replace values
/// whole).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

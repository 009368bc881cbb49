//! An in-memory MediaApi for unit tests.

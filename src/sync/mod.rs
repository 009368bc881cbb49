//! Keeps the catalog in step with the backing tree.

//! The real HTTP client.

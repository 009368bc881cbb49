#![allow(dead_code)] // each test binary uses its own part of the shared helpers

pub mod model;
pub mod proxy;
pub mod reftest;
pub mod service;
pub mod soak;

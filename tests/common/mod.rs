#![allow(dead_code)] // each test binary uses its own part of the shared helpers

pub mod service;

//! The actor shim: per-actor databases woken from the KV store (placeholder: the lead's branch replaces this file).

pub mod migrations;
pub mod statements;

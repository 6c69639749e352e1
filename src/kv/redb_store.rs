//! The `redb` backend (being built).

//! Typed records kept in the store (serde JSON values).

//! The phone billing service: a gRPC API over a SQLite or PostgreSQL
//! database. See `ARCHITECTURE.md` for the layers.

pub mod app;
pub mod clock;
pub mod delivery;
pub mod demo;
pub mod document;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod import;
pub mod metrics;
pub mod nats;
pub mod readiness;
pub mod scheduler;
pub mod service;
pub mod shutdown;
pub mod storage;
pub mod tls;

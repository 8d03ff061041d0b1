//! Black-box tests: the real server on an ephemeral port with a fresh,
//! migrated database per test, driven through real tonic clients.

mod access;
mod acked;
mod bounds;
mod calls;
mod contacts;
mod correctness;
mod customers;
mod documents;
mod engine;
mod helpers;
mod import;
mod ingest;
mod invoices;
mod metrics;
mod nats;
mod notifications;
mod numbers;
mod operations;
mod paging;
mod process;
mod property;
mod readme;
mod replicas;
mod robustness;
mod scaling;
mod secrets;
mod streaming;
mod tariffs;
mod tenants;
mod tls;

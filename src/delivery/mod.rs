//! Sending: webhook POSTs over HTTP(S) (`webhook`) and emails over SMTP
//! (`email`), what each says (`events`), and the low-priority thread that
//! renders and encodes (`background`). What is sent, to whom and when is
//! decided by `domain::delivery` and sequenced by `service::deliveries`.

pub mod background;
pub mod email;
pub mod events;
pub mod webhook;

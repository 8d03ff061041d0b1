//! SeaORM entities, one per table. Timestamps are UTC microseconds since the
//! epoch; money is integer micros.

pub mod access_token;
pub mod account;
pub mod api_key;
pub mod call;
pub mod call_segment;
pub mod customer;
pub mod customer_operator;
pub mod invoice;
pub mod invoice_line;
pub mod login_failure;
pub mod operator;
pub mod plan;
pub mod plan_included_tariff;
pub mod plan_tariff;
pub mod top_up;

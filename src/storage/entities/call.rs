//! The `calls` table: rated calls, with the rate applied stored alongside.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "calls")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique per customer (with `customer_id`).
    pub call_id: Option<String>,
    pub customer_id: i64,
    pub started_at: i64,
    pub duration_seconds: i64,
    pub billed_seconds: i64,
    pub per_minute_micros: i64,
    pub billing_increment_seconds: i32,
    pub cost_micros: i64,
    pub caller_number: String,
    pub callee_number: String,
    pub received_at: i64,
    /// The month whose invoice bills the call, `year * 100 + month`.
    pub billing_period: i32,
    /// The month the call started in, `year * 100 + month`.
    pub started_period: i32,
    pub connect_fee_micros: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

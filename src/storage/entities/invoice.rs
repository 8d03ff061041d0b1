//! The `invoices` table: one row per customer and month, immutable once its
//! issuing transaction commits.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "invoices")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub number: String,
    pub customer_id: i64,
    pub period_year: i32,
    pub period_month: i32,
    pub period_start: i64,
    pub period_end: i64,
    pub issued_at: i64,
    pub currency_code: String,
    pub call_count: i64,
    pub billed_seconds: i64,
    pub usage_micros: i64,
    pub monthly_fee_micros: i64,
    pub total_micros: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

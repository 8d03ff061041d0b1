//! The `customers` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "customers")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    #[sea_orm(unique)]
    pub phone_number: String,
    pub plan_id: i64,
    pub balance_micros: i64,
    pub created_at: i64,
    /// The last month invoiced, `year * 100 + month`; `None` before the
    /// first invoice.
    pub invoiced_through: Option<i32>,
    pub email: Option<String>,
    pub language: String,
    /// Prepaid: the balance below which the customer is alerted.
    pub low_balance_threshold_micros: Option<i64>,
    /// Whether its last alert was `balance.low` (see
    /// `domain::delivery::balance_alert`).
    pub low_balance_alerted: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

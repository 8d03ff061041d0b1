//! The `top_ups` table: prepaid credits, unique by customer and `request_id`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "top_ups")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique per customer (with `customer_id`).
    pub request_id: String,
    pub customer_id: i64,
    pub amount_micros: i64,
    pub created_at: i64,
    /// The month whose invoice states the top-up, `year * 100 + month`.
    pub billing_period: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

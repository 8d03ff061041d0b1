//! The `plan_tariffs` table: a plan's tariffs in their given order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "plan_tariffs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub plan_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i32,
    pub name: String,
    pub destination_prefix: String,
    /// Bit 0 is Monday; 0 means every day.
    pub days: i32,
    pub start_minute: i32,
    pub end_minute: i32,
    pub per_minute_micros: i64,
    pub connect_fee_micros: i64,
    pub first_increment_seconds: i32,
    pub billing_increment_seconds: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

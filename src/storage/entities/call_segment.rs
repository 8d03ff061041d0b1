//! The `call_segments` table: a tariffed call's priced pieces, in order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "call_segments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub call_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i32,
    pub tariff_name: String,
    pub started_at: i64,
    pub billed_seconds: i64,
    pub cost_micros: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

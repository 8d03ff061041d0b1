//! The tariffs whose billed seconds a plan's included minutes cover, when
//! the plan limits them (no rows: every tariff).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PlanIncludedTariffs::Table)
                    .col(big_integer(PlanIncludedTariffs::PlanId))
                    .col(string(PlanIncludedTariffs::TariffName))
                    .primary_key(
                        Index::create()
                            .col(PlanIncludedTariffs::PlanId)
                            .col(PlanIncludedTariffs::TariffName),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PlanIncludedTariffs::Table, PlanIncludedTariffs::PlanId)
                            .to(Plans::Table, Plans::Id),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PlanIncludedTariffs::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum PlanIncludedTariffs {
    Table,
    PlanId,
    TariffName,
}

#[derive(DeriveIden)]
enum Plans {
    Table,
    Id,
}

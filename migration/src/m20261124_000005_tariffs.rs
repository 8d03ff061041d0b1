//! Tariffs of plans, the rated segments of calls, and each call's connect
//! fee. A call of a plan without tariffs stores no segment rows: its one
//! segment is its whole billed time at the plan's rate.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PlanTariffs::Table)
                    .col(big_integer(PlanTariffs::PlanId))
                    .col(integer(PlanTariffs::Position))
                    .col(string(PlanTariffs::Name))
                    .col(string(PlanTariffs::DestinationPrefix))
                    .col(integer(PlanTariffs::Days))
                    .col(integer(PlanTariffs::StartMinute))
                    .col(integer(PlanTariffs::EndMinute))
                    .col(big_integer(PlanTariffs::PerMinuteMicros))
                    .col(big_integer(PlanTariffs::ConnectFeeMicros))
                    .col(integer(PlanTariffs::FirstIncrementSeconds))
                    .col(integer(PlanTariffs::BillingIncrementSeconds))
                    .primary_key(
                        Index::create()
                            .col(PlanTariffs::PlanId)
                            .col(PlanTariffs::Position),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PlanTariffs::Table, PlanTariffs::PlanId)
                            .to(Plans::Table, Plans::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CallSegments::Table)
                    .col(big_integer(CallSegments::CallId))
                    .col(integer(CallSegments::Position))
                    .col(string(CallSegments::TariffName))
                    .col(big_integer(CallSegments::StartedAt))
                    .col(big_integer(CallSegments::BilledSeconds))
                    .col(big_integer(CallSegments::CostMicros))
                    .primary_key(
                        Index::create()
                            .col(CallSegments::CallId)
                            .col(CallSegments::Position),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CallSegments::Table, CallSegments::CallId)
                            .to(Calls::Table, Calls::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .add_column(big_integer(Calls::ConnectFeeMicros).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .drop_column(Calls::ConnectFeeMicros)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(CallSegments::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(PlanTariffs::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum PlanTariffs {
    Table,
    PlanId,
    Position,
    Name,
    DestinationPrefix,
    Days,
    StartMinute,
    EndMinute,
    PerMinuteMicros,
    ConnectFeeMicros,
    FirstIncrementSeconds,
    BillingIncrementSeconds,
}

#[derive(DeriveIden)]
enum CallSegments {
    Table,
    CallId,
    Position,
    TariffName,
    StartedAt,
    BilledSeconds,
    CostMicros,
}

#[derive(DeriveIden)]
enum Plans {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Id,
    ConnectFeeMicros,
}

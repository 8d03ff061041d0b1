//! Plans, operators, customers and their links, calls and top-ups.
//!
//! The guarantees that must hold across replicas live here as constraints:
//! a phone number belongs to one customer, an operator name to one operator,
//! a switch `call_id` and a top-up `request_id` are stored at most once.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Plans::Table)
                    .col(big_pk_auto(Plans::Id))
                    .col(string(Plans::Name))
                    .col(string(Plans::Kind))
                    .col(string(Plans::CurrencyCode))
                    .col(big_integer(Plans::MonthlyFeeMicros))
                    .col(big_integer(Plans::PerMinuteMicros))
                    .col(integer(Plans::BillingIncrementSeconds))
                    .col(big_integer(Plans::IncludedMinutes))
                    .col(big_integer(Plans::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Operators::Table)
                    .col(big_pk_auto(Operators::Id))
                    .col(string_uniq(Operators::Name))
                    .col(big_integer(Operators::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .col(big_pk_auto(Customers::Id))
                    .col(string(Customers::Name))
                    .col(string_uniq(Customers::PhoneNumber))
                    .col(big_integer(Customers::PlanId))
                    .col(big_integer(Customers::BalanceMicros).default(0))
                    .col(big_integer(Customers::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Customers::Table, Customers::PlanId)
                            .to(Plans::Table, Plans::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CustomerOperators::Table)
                    .col(big_integer(CustomerOperators::CustomerId))
                    .col(big_integer(CustomerOperators::OperatorId))
                    .primary_key(
                        Index::create()
                            .col(CustomerOperators::CustomerId)
                            .col(CustomerOperators::OperatorId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CustomerOperators::Table, CustomerOperators::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CustomerOperators::Table, CustomerOperators::OperatorId)
                            .to(Operators::Table, Operators::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_customer_operators_operator")
                    .table(CustomerOperators::Table)
                    .col(CustomerOperators::OperatorId)
                    .col(CustomerOperators::CustomerId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Calls::Table)
                    .col(big_pk_auto(Calls::Id))
                    .col(string_null(Calls::CallId).unique_key())
                    .col(big_integer(Calls::CustomerId))
                    .col(big_integer(Calls::StartedAt))
                    .col(big_integer(Calls::DurationSeconds))
                    .col(big_integer(Calls::BilledSeconds))
                    .col(big_integer(Calls::PerMinuteMicros))
                    .col(integer(Calls::BillingIncrementSeconds))
                    .col(big_integer(Calls::CostMicros))
                    .col(string(Calls::CallerNumber))
                    .col(string(Calls::CalleeNumber))
                    .col(big_integer(Calls::ReceivedAt))
                    .col(big_integer_null(Calls::InvoiceId))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Calls::Table, Calls::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_calls_customer_started")
                    .table(Calls::Table)
                    .col(Calls::CustomerId)
                    .col(Calls::StartedAt)
                    .col(Calls::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_calls_started")
                    .table(Calls::Table)
                    .col(Calls::StartedAt)
                    .col(Calls::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TopUps::Table)
                    .col(big_pk_auto(TopUps::Id))
                    .col(string_uniq(TopUps::RequestId))
                    .col(big_integer(TopUps::CustomerId))
                    .col(big_integer(TopUps::AmountMicros))
                    .col(big_integer(TopUps::CreatedAt))
                    .col(big_integer_null(TopUps::InvoiceId))
                    .foreign_key(
                        ForeignKey::create()
                            .from(TopUps::Table, TopUps::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_top_ups_customer_created")
                    .table(TopUps::Table)
                    .col(TopUps::CustomerId)
                    .col(TopUps::CreatedAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            TopUps::Table.into_iden(),
            Calls::Table.into_iden(),
            CustomerOperators::Table.into_iden(),
            Customers::Table.into_iden(),
            Operators::Table.into_iden(),
            Plans::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Plans {
    Table,
    Id,
    Name,
    Kind,
    CurrencyCode,
    MonthlyFeeMicros,
    PerMinuteMicros,
    BillingIncrementSeconds,
    IncludedMinutes,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Operators {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    Name,
    PhoneNumber,
    PlanId,
    BalanceMicros,
    CreatedAt,
}

#[derive(DeriveIden)]
enum CustomerOperators {
    Table,
    CustomerId,
    OperatorId,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Id,
    CallId,
    CustomerId,
    StartedAt,
    DurationSeconds,
    BilledSeconds,
    PerMinuteMicros,
    BillingIncrementSeconds,
    CostMicros,
    CallerNumber,
    CalleeNumber,
    ReceivedAt,
    InvoiceId,
}

#[derive(DeriveIden)]
enum TopUps {
    Table,
    Id,
    RequestId,
    CustomerId,
    AmountMicros,
    CreatedAt,
    InvoiceId,
}

//! Delivery through a transactional outbox.
//!
//! - `webhooks`: an operator's HTTPS endpoints, the events each receives
//!   (comma-separated names) and its signing secret. The secret is stored
//!   as given, not hashed: every delivery is signed with it.
//! - `deliveries`: one row per message to send (an invoice's email, one
//!   webhook's event), written in the transaction that causes it (issuing
//!   an invoice, a call or top-up crossing a low-balance threshold), so
//!   nothing is issued without its deliveries. `public_id` is the stable id
//!   receivers see (`Billing-Delivery-Id`) on every attempt. Workers claim
//!   due rows by setting `claimed_until` (a lease: a worker that dies
//!   mid-delivery leaves the row to be claimed again once it lapses).
//! - `customers.low_balance_threshold_micros`: a prepaid customer's alert
//!   threshold (null: no alerts); `low_balance_alerted` is whether the
//!   balance is below it since the last alert, so each crossing alerts once.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Webhooks::Table)
                    .col(big_pk_auto(Webhooks::Id))
                    .col(big_integer(Webhooks::OperatorId))
                    .col(string(Webhooks::Url))
                    .col(string(Webhooks::Events))
                    .col(string(Webhooks::Secret))
                    .col(big_integer(Webhooks::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Webhooks::Table, Webhooks::OperatorId)
                            .to(Operators::Table, Operators::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhooks_operator")
                    .table(Webhooks::Table)
                    .col(Webhooks::OperatorId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .col(big_pk_auto(Deliveries::Id))
                    .col(string_uniq(Deliveries::PublicId))
                    .col(string(Deliveries::Event))
                    .col(string(Deliveries::Channel))
                    // No foreign key: a deleted webhook's deliveries stay,
                    // and fail, as a record of what was not sent.
                    .col(big_integer_null(Deliveries::WebhookId))
                    .col(big_integer(Deliveries::CustomerId))
                    .col(big_integer_null(Deliveries::InvoiceId))
                    .col(text(Deliveries::Payload))
                    .col(string(Deliveries::Status))
                    .col(integer(Deliveries::Attempts))
                    .col(text(Deliveries::LastError))
                    .col(big_integer(Deliveries::NextAttemptAt))
                    .col(big_integer_null(Deliveries::ClaimedUntil))
                    .col(big_integer(Deliveries::CreatedAt))
                    .col(big_integer_null(Deliveries::DeliveredAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Deliveries::Table, Deliveries::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            (
                "idx_deliveries_due",
                vec![Deliveries::Status, Deliveries::NextAttemptAt],
            ),
            ("idx_deliveries_customer", vec![Deliveries::CustomerId]),
            ("idx_deliveries_invoice", vec![Deliveries::InvoiceId]),
        ] {
            let mut index = Index::create();
            index.name(name).table(Deliveries::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        // One column per statement: SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(Customers::Table)
                    .add_column(big_integer_null(Customers::LowBalanceThresholdMicros))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Customers::Table)
                    .add_column(boolean(Customers::LowBalanceAlerted).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Customers::LowBalanceAlerted,
            Customers::LowBalanceThresholdMicros,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Customers::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Deliveries::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Webhooks::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    Id,
    OperatorId,
    Url,
    Events,
    Secret,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Id,
    PublicId,
    Event,
    Channel,
    WebhookId,
    CustomerId,
    InvoiceId,
    Payload,
    Status,
    Attempts,
    LastError,
    NextAttemptAt,
    ClaimedUntil,
    CreatedAt,
    DeliveredAt,
}

#[derive(DeriveIden)]
enum Operators {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    LowBalanceThresholdMicros,
    LowBalanceAlerted,
}

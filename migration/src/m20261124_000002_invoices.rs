//! Invoices and their lines.
//!
//! `(customer_id, period_year, period_month)` is unique: one invoice per
//! customer and month, whatever number of replicas issue concurrently. Calls
//! and top-ups point at the invoice that billed them (`invoice_id`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Invoices::Table)
                    .col(big_pk_auto(Invoices::Id))
                    .col(string_uniq(Invoices::Number))
                    .col(big_integer(Invoices::CustomerId))
                    .col(integer(Invoices::PeriodYear))
                    .col(integer(Invoices::PeriodMonth))
                    .col(big_integer(Invoices::PeriodStart))
                    .col(big_integer(Invoices::PeriodEnd))
                    .col(big_integer(Invoices::IssuedAt))
                    .col(string(Invoices::CurrencyCode))
                    .col(big_integer(Invoices::CallCount))
                    .col(big_integer(Invoices::BilledSeconds))
                    .col(big_integer(Invoices::UsageMicros))
                    .col(big_integer(Invoices::MonthlyFeeMicros))
                    .col(big_integer(Invoices::TotalMicros))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Invoices::Table, Invoices::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_invoices_customer_period")
                    .table(Invoices::Table)
                    .col(Invoices::CustomerId)
                    .col(Invoices::PeriodYear)
                    .col(Invoices::PeriodMonth)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_invoices_period")
                    .table(Invoices::Table)
                    .col(Invoices::PeriodYear)
                    .col(Invoices::PeriodMonth)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(InvoiceLines::Table)
                    .col(big_pk_auto(InvoiceLines::Id))
                    .col(big_integer(InvoiceLines::InvoiceId))
                    .col(integer(InvoiceLines::Position))
                    .col(string(InvoiceLines::Kind))
                    .col(string(InvoiceLines::Description))
                    .col(big_integer(InvoiceLines::Quantity))
                    .col(big_integer(InvoiceLines::AmountMicros))
                    .foreign_key(
                        ForeignKey::create()
                            .from(InvoiceLines::Table, InvoiceLines::InvoiceId)
                            .to(Invoices::Table, Invoices::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_invoice_lines_position")
                    .table(InvoiceLines::Table)
                    .col(InvoiceLines::InvoiceId)
                    .col(InvoiceLines::Position)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_calls_invoice")
                    .table(Calls::Table)
                    .col(Calls::InvoiceId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_top_ups_invoice")
                    .table(TopUps::Table)
                    .col(TopUps::InvoiceId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_top_ups_invoice")
                    .table(TopUps::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_calls_invoice")
                    .table(Calls::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(InvoiceLines::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Invoices::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Invoices {
    Table,
    Id,
    Number,
    CustomerId,
    PeriodYear,
    PeriodMonth,
    PeriodStart,
    PeriodEnd,
    IssuedAt,
    CurrencyCode,
    CallCount,
    BilledSeconds,
    UsageMicros,
    MonthlyFeeMicros,
    TotalMicros,
}

#[derive(DeriveIden)]
enum InvoiceLines {
    Table,
    Id,
    InvoiceId,
    Position,
    Kind,
    Description,
    Quantity,
    AmountMicros,
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    InvoiceId,
}

#[derive(DeriveIden)]
enum TopUps {
    Table,
    InvoiceId,
}

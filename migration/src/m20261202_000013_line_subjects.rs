//! Invoice lines say what they are about in data, not only in English
//! text, so that a document can be written in the customer's language:
//! `call_count` (calls the line bills, else 0) and `subject` (the plan,
//! tariff, late month or top-up instant; empty when the line has none).
//! Lines issued before this migration keep 0 and empty.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(InvoiceLines::Table)
                    .add_column(
                        ColumnDef::new(InvoiceLines::CallCount)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(InvoiceLines::Table)
                    .add_column(
                        ColumnDef::new(InvoiceLines::Subject)
                            .string()
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [InvoiceLines::Subject, InvoiceLines::CallCount] {
            manager
                .alter_table(
                    Table::alter()
                        .table(InvoiceLines::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum InvoiceLines {
    Table,
    CallCount,
    Subject,
}

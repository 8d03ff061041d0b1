//! Who receives what: a customer's `email` (null: none) and `language`
//! (`en` or `de`, `en` for existing customers), and an operator's issuer
//! details (`legal_name`, `address`, `tax_id`, `support_email`; empty until
//! set). Existing rows keep everything they had.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for column in [
            ColumnDef::new(Customers::Email).string().null().to_owned(),
            ColumnDef::new(Customers::Language)
                .string()
                .not_null()
                .default("en")
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Customers::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in ISSUER_COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(Operators::Table)
                        .add_column(ColumnDef::new(column).string().not_null().default(""))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Customers::Email, Customers::Language] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Customers::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in ISSUER_COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(Operators::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Customers {
    Table,
    Email,
    Language,
}

/// The operator's issuer details, each text, empty until set.
const ISSUER_COLUMNS: [Operators; 4] = [
    Operators::LegalName,
    Operators::Address,
    Operators::TaxId,
    Operators::SupportEmail,
];

#[derive(DeriveIden, Clone, Copy)]
enum Operators {
    Table,
    LegalName,
    Address,
    TaxId,
    SupportEmail,
}

//! Accounts, their access tokens and API keys, and the login throttle.
//!
//! Tokens and keys are stored as a public `selector` (the unique lookup key)
//! and the SHA-256 hash of their secret part, never the secret itself. The
//! login throttle is a table, not process memory, so every replica sees the
//! same count of failures for a username.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .col(big_pk_auto(Accounts::Id))
                    .col(string_uniq(Accounts::Username))
                    .col(string(Accounts::PasswordHash))
                    .col(string(Accounts::Role))
                    .col(big_integer_null(Accounts::OperatorId))
                    .col(big_integer_null(Accounts::CustomerId))
                    .col(big_integer(Accounts::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Accounts::Table, Accounts::OperatorId)
                            .to(Operators::Table, Operators::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Accounts::Table, Accounts::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .to_owned(),
            )
            .await?;
        for (table, name) in [
            (Credentials::AccessTokens, "access_tokens"),
            (Credentials::ApiKeys, "api_keys"),
        ] {
            let mut create = Table::create();
            create
                .table(table)
                .col(big_pk_auto(Credentials::Id))
                .col(string_uniq(Credentials::Selector))
                .col(string(Credentials::SecretHash))
                .col(big_integer(Credentials::AccountId))
                .col(big_integer(Credentials::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(table, Credentials::AccountId)
                        .to(Accounts::Table, Accounts::Id),
                );
            if name == "access_tokens" {
                create.col(big_integer(Credentials::ExpiresAt));
            } else {
                create
                    .col(string(Credentials::Name))
                    .col(big_integer_null(Credentials::RevokedAt));
            }
            manager.create_table(create.to_owned()).await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_access_tokens_expires_at")
                    .table(Credentials::AccessTokens)
                    .col(Credentials::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoginFailures::Table)
                    .col(string(LoginFailures::Username).primary_key())
                    .col(integer(LoginFailures::Failures))
                    .col(big_integer(LoginFailures::LastFailureAt))
                    .col(big_integer_null(LoginFailures::LockedUntil))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_login_failures_last_failure_at")
                    .table(LoginFailures::Table)
                    .col(LoginFailures::LastFailureAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            LoginFailures::Table.into_iden(),
            Credentials::ApiKeys.into_iden(),
            Credentials::AccessTokens.into_iden(),
            Accounts::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    Username,
    PasswordHash,
    Role,
    OperatorId,
    CustomerId,
    CreatedAt,
}

/// The columns of `access_tokens` and `api_keys`.
#[derive(DeriveIden, Clone, Copy)]
enum Credentials {
    AccessTokens,
    ApiKeys,
    Id,
    Selector,
    SecretHash,
    AccountId,
    CreatedAt,
    ExpiresAt,
    Name,
    RevokedAt,
}

#[derive(DeriveIden)]
enum LoginFailures {
    Table,
    Username,
    Failures,
    LastFailureAt,
    LockedUntil,
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
}

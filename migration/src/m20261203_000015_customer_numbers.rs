//! Numbers belong to customers over time.
//!
//! - `customer_numbers`: who held which number from when (`valid_from`,
//!   inclusive) until when (`valid_until`, exclusive; null while held). A
//!   number belongs to at most one customer at any instant: on PostgreSQL
//!   an exclusion constraint (`btree_gist`) over the number and the
//!   interval, on SQLite triggers that abort an overlapping insert or
//!   update (its one writer runs them serially, so they cannot race).
//! - `number_versions`: one row whose `version` every change of
//!   `customer_numbers` increments in its own transaction. A replica's
//!   cache of the holders is as new as the version it read; a batch of
//!   calls charged through the cache checks the version in its
//!   transaction (and on PostgreSQL holds it `FOR SHARE`, which a change
//!   waits for), so no call is stored against a holder that changed.
//! - Every customer's `phone_number` becomes its first assignment, from its
//!   creation. `customers.phone_number` is no longer unique: a number
//!   released by one customer may become another's first.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::rebuild;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The phone number column as SQLite's definition of `customers` holds it.
const UNIQUE_PHONE: &str = "\"phone_number\" varchar NOT NULL UNIQUE";
const PLAIN_PHONE: &str = "\"phone_number\" varchar NOT NULL";

/// An overlap of `NEW` with another assignment of its number, for the
/// SQLite triggers; `{other}` narrows the rows compared.
const OVERLAP: &str = "SELECT RAISE(ABORT, 'customer_numbers_overlap') WHERE EXISTS (\
     SELECT 1 FROM customer_numbers c WHERE c.number = NEW.number {other} \
     AND (c.valid_until IS NULL OR c.valid_until > NEW.valid_from) \
     AND (NEW.valid_until IS NULL OR NEW.valid_until > c.valid_from))";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let sqlite = manager.get_database_backend() == DatabaseBackend::Sqlite;
        let id = if sqlite {
            "id integer NOT NULL PRIMARY KEY AUTOINCREMENT"
        } else {
            "id bigserial PRIMARY KEY"
        };
        db.execute_unprepared(&format!(
            "CREATE TABLE customer_numbers ({id}, \
             customer_id bigint NOT NULL REFERENCES customers (id), \
             number varchar NOT NULL, \
             valid_from bigint NOT NULL, \
             valid_until bigint NULL, \
             CHECK (valid_until IS NULL OR valid_until > valid_from))"
        ))
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_customer_numbers_number ON customer_numbers (number, valid_from)",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_customer_numbers_customer ON customer_numbers (customer_id)",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE number_versions (id integer NOT NULL PRIMARY KEY, \
             version bigint NOT NULL)",
        )
        .await?;
        db.execute_unprepared("INSERT INTO number_versions (id, version) VALUES (1, 0)")
            .await?;
        db.execute_unprepared(
            "INSERT INTO customer_numbers (customer_id, number, valid_from, valid_until) \
             SELECT id, phone_number, created_at, NULL FROM customers ORDER BY id",
        )
        .await?;
        if sqlite {
            db.execute_unprepared(&format!(
                "CREATE TRIGGER customer_numbers_no_overlap_insert \
                 BEFORE INSERT ON customer_numbers BEGIN {}; END",
                OVERLAP.replace("{other}", "")
            ))
            .await?;
            db.execute_unprepared(&format!(
                "CREATE TRIGGER customer_numbers_no_overlap_update \
                 BEFORE UPDATE ON customer_numbers BEGIN {}; END",
                OVERLAP.replace("{other}", "AND c.id <> NEW.id")
            ))
            .await?;
            rebuild(manager, "customers", (UNIQUE_PHONE, PLAIN_PHONE), "id").await?;
        } else {
            db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS btree_gist")
                .await?;
            db.execute_unprepared(
                "ALTER TABLE customer_numbers ADD CONSTRAINT customer_numbers_overlap \
                 EXCLUDE USING gist (number WITH =, int8range(valid_from, valid_until) WITH &&)",
            )
            .await?;
            db.execute_unprepared(
                "ALTER TABLE customers DROP CONSTRAINT customers_phone_number_key",
            )
            .await?;
        }
        Ok(())
    }

    /// Fails if a phone number is some customer's first twice by then.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DatabaseBackend::Sqlite {
            rebuild(manager, "customers", (PLAIN_PHONE, UNIQUE_PHONE), "id").await?;
        } else {
            db.execute_unprepared(
                "ALTER TABLE customers ADD CONSTRAINT customers_phone_number_key UNIQUE (phone_number)",
            )
            .await?;
        }
        db.execute_unprepared("DROP TABLE number_versions").await?;
        db.execute_unprepared("DROP TABLE customer_numbers").await?;
        Ok(())
    }
}

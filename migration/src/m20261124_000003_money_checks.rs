//! The database holds the line on money and call ratings, behind the
//! service's own validation: plan prices, top-ups and call figures within
//! their bounds, and (SQLite) a balance that is always an integer.
//!
//! PostgreSQL gets `CHECK` constraints. SQLite cannot add a constraint to an
//! existing table, so it gets `BEFORE` triggers that abort the same rows
//! (`SQLITE_CONSTRAINT_TRIGGER`); one also stops an overflowing balance from
//! being stored as a REAL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `(name, table, rule a new row must satisfy)`; `{row}` marks each column
/// (nothing for a `CHECK`, `NEW.` in a trigger).
const RULES: [(&str, &str, &str); 3] = [
    (
        "chk_plans_money",
        "plans",
        "{row}per_minute_micros BETWEEN 0 AND 1000000000 \
         AND {row}monthly_fee_micros BETWEEN 0 AND 1000000000000 \
         AND {row}billing_increment_seconds BETWEEN 1 AND 3600 \
         AND {row}included_minutes >= 0",
    ),
    (
        "chk_top_ups_amount",
        "top_ups",
        "{row}amount_micros BETWEEN 1 AND 1000000000000",
    ),
    (
        "chk_calls_rating",
        "calls",
        "{row}duration_seconds BETWEEN 1 AND 86400 \
         AND {row}billed_seconds >= {row}duration_seconds \
         AND {row}cost_micros >= 0",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Sqlite => {
                for (name, table, rule) in RULES {
                    let new_rule = rule.replace("{row}", "NEW.");
                    db.execute_unprepared(&format!(
                        "CREATE TRIGGER {name} BEFORE INSERT ON {table} \
                         WHEN NOT ({new_rule}) \
                         BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END"
                    ))
                    .await?;
                }
                db.execute_unprepared(
                    "CREATE TRIGGER chk_customers_balance_integer \
                     BEFORE UPDATE OF balance_micros ON customers \
                     WHEN typeof(NEW.balance_micros) <> 'integer' \
                     BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: chk_customers_balance_integer'); END",
                )
                .await?;
            }
            _ => {
                for (name, table, rule) in RULES {
                    db.execute_unprepared(&format!(
                        "ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({})",
                        rule.replace("{row}", "")
                    ))
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Sqlite => {
                for (name, _, _) in RULES {
                    db.execute_unprepared(&format!("DROP TRIGGER IF EXISTS {name}"))
                        .await?;
                }
                db.execute_unprepared("DROP TRIGGER IF EXISTS chk_customers_balance_integer")
                    .await?;
            }
            _ => {
                for (name, table, _) in RULES {
                    db.execute_unprepared(&format!(
                        "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
                    ))
                    .await?;
                }
            }
        }
        Ok(())
    }
}

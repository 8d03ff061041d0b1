//! What SQLite's `ALTER TABLE` cannot do, done by rebuilding the table.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DatabaseBackend, QueryResult, Statement};

/// Replaces SQLite's `table` by the same table with `from` in its
/// definition written as `to` (`change`), keeping every row, index and
/// trigger, within the migration's transaction; the rows are copied back
/// in `order`. The rows wait in a copy while the table is dropped and
/// created again; tables referencing it keep doing so by name, and their
/// foreign keys are checked at commit (deferred), once every row is back.
pub async fn rebuild(
    manager: &SchemaManager<'_>,
    table: &str,
    (from, to): (&str, &str),
    order: &str,
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let schema = |kinds: &str| {
        Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            format!(
                "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ({kinds}) \
                 AND sql IS NOT NULL ORDER BY rowid"
            ),
            [table.into()],
        )
    };
    let definition = |rows: Vec<QueryResult>| -> Result<Vec<String>, DbErr> {
        rows.iter().map(|row| row.try_get_by_index(0)).collect()
    };
    let create = definition(db.query_all_raw(schema("'table'")).await?)?
        .pop()
        .ok_or_else(|| DbErr::Migration(format!("no table {table}")))?;
    if !create.contains(from) {
        return Err(DbErr::Migration(format!(
            "the definition of {table} does not hold `{from}`: {create}"
        )));
    }
    let indexes = definition(db.query_all_raw(schema("'index'")).await?)?;
    let triggers = definition(db.query_all_raw(schema("'trigger'")).await?)?;
    db.execute_unprepared("PRAGMA defer_foreign_keys = ON")
        .await?;
    db.execute_unprepared(&format!(
        "CREATE TABLE {table}_rebuilt AS SELECT * FROM {table}"
    ))
    .await?;
    db.execute_unprepared(&format!("DROP TABLE {table}"))
        .await?;
    db.execute_unprepared(&create.replacen(from, to, 1)).await?;
    for index in &indexes {
        db.execute_unprepared(index).await?;
    }
    db.execute_unprepared(&format!(
        "INSERT INTO {table} SELECT * FROM {table}_rebuilt ORDER BY {order}"
    ))
    .await?;
    db.execute_unprepared(&format!("DROP TABLE {table}_rebuilt"))
        .await?;
    // After the copy: the triggers check new rows, which these are not.
    for trigger in &triggers {
        db.execute_unprepared(trigger).await?;
    }
    Ok(())
}

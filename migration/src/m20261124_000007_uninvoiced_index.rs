//! Indexes that serve billing as it now queries: every read of calls or
//! top-ups by invoice goes through the rows an issue claimed (returned by
//! its update), so the general `invoice_id` indexes are gone; what billing
//! looks up is a customer's *uninvoiced* calls by start (claiming,
//! previews, open months), which a partial index holds, small because
//! invoiced calls leave it. See BENCHMARKS.md for the measured effect.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS idx_calls_invoice")
            .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS idx_top_ups_invoice")
            .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_calls_uninvoiced ON calls (customer_id, started_at) \
             WHERE invoice_id IS NULL",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS idx_calls_uninvoiced")
            .await?;
        db.execute_unprepared("CREATE INDEX idx_calls_invoice ON calls (invoice_id)")
            .await?;
        db.execute_unprepared("CREATE INDEX idx_top_ups_invoice ON top_ups (invoice_id)")
            .await?;
        Ok(())
    }
}

//! Database schema of the billing service, as ordered `sea-orm-migration`
//! migrations. Every timestamp column holds UTC microseconds since the Unix
//! epoch (`BIGINT`) and every money column integer micros, so both backends
//! (SQLite and PostgreSQL) compare and sum them exactly.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_core;
mod m20261124_000002_invoices;
mod m20261124_000003_money_checks;
mod m20261124_000004_accounts;
mod m20261124_000005_tariffs;
mod m20261124_000006_included_tariffs;
mod m20261124_000007_uninvoiced_index;
mod m20261125_000008_calls_by_customer;
mod m20261202_000009_billing_periods;
mod m20261202_000010_keys_per_customer;
mod m20261202_000011_disabled_accounts;
mod m20261202_000012_contacts_and_issuers;
mod m20261202_000013_line_subjects;
mod m20261202_000014_deliveries;
mod m20261203_000015_customer_numbers;
mod sqlite;

/// The service's migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_core::Migration),
            Box::new(m20261124_000002_invoices::Migration),
            Box::new(m20261124_000003_money_checks::Migration),
            Box::new(m20261124_000004_accounts::Migration),
            Box::new(m20261124_000005_tariffs::Migration),
            Box::new(m20261124_000006_included_tariffs::Migration),
            Box::new(m20261124_000007_uninvoiced_index::Migration),
            Box::new(m20261125_000008_calls_by_customer::Migration),
            Box::new(m20261202_000009_billing_periods::Migration),
            Box::new(m20261202_000010_keys_per_customer::Migration),
            Box::new(m20261202_000011_disabled_accounts::Migration),
            Box::new(m20261202_000012_contacts_and_issuers::Migration),
            Box::new(m20261202_000013_line_subjects::Migration),
            Box::new(m20261202_000014_deliveries::Migration),
            Box::new(m20261203_000015_customer_numbers::Migration),
        ]
    }
}

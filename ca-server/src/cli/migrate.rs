//! `migrate`: bring the database schema up to date.

use clap::Args;
use serde_json::json;

use crate::store::{PgSettings, PgStore, SqliteStore};

use super::{Cli, CliResult, Location, location, sqlite_db};

#[derive(Debug, Args)]
pub(super) struct MigrateArgs {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// PostgreSQL: applies pending migrations under sqlx's advisory lock (run it once per upgrade,
/// before starting servers of the new version; servers only check the version). SQLite: the
/// single server migrates its file when it opens it, which this does too.
pub(super) async fn migrate(cli: &Cli, a: &MigrateArgs) -> CliResult<()> {
    let place = location(cli)?;
    let (before, after) = match place {
        Location::Postgres(url) => {
            let store = PgStore::connect(url, &PgSettings::for_migrations()).await?;
            let result = store.migrate().await;
            store.close().await;
            result?
        }
        Location::Dir(dir) => {
            let (store, before, after) =
                SqliteStore::open_migrated(&sqlite_db(dir)?, false).await?;
            store.close().await;
            (before, after)
        }
    };
    if a.json {
        println!(
            "{}",
            json!({ "database": place.describe(), "from": before, "to": after })
        );
    } else if before == after {
        println!("{}: schema up to date (version {after})", place.describe());
    } else {
        println!(
            "{}: schema migrated from version {before} to {after}",
            place.describe()
        );
    }
    Ok(())
}

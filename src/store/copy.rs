//! Copying a whole store into an empty one, across backends (SQLite to
//! PostgreSQL and back): every table row for row, read from one snapshot
//! and written in one transaction, so the copy keeps the log's sequence
//! numbers and identity (partners' cursors stay valid), the ledger chain,
//! partners, policies, keys and certificates.

use sqlx::{AssertSqlSafe, Row};

use super::db::{Dialect, Pool, Tx, on};
use super::{Store, StoreError};

/// How a column is read and written.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A 64-bit integer (or NULL).
    Int,
    /// A 32-bit integer (indicator kind, TLP).
    Int32,
    /// Text.
    Text,
    /// Bytes.
    Bytes,
    /// A flag.
    Bool,
}

use Kind::{Bool, Bytes, Int, Int32, Text};

/// One table: its name, its columns, and the integer column that orders
/// (and pages) its rows, if any; `serial`: that column takes numbers from a
/// sequence on PostgreSQL, moved past the copied rows.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    key: Option<&'static str>,
    serial: bool,
}

/// Every table of the store. A table the source holds that is not listed
/// here stops the copy (a migration added one and the copy was not taught
/// it), rather than leaving it behind.
const TABLES: &[Table] = &[
    Table {
        name: "indicators",
        columns: &[
            ("seq", Int),
            ("origin_org", Text),
            ("indicator_id", Text),
            ("version", Int),
            ("received_from", Text),
            ("envelope", Bytes),
            ("kind", Int32),
            ("value", Text),
            ("tlp", Int32),
            ("confidence", Int),
            ("created_ms", Int),
            ("modified_ms", Int),
            ("revoked", Bool),
            ("stored_ms", Int),
            ("path", Text),
        ],
        key: Some("seq"),
        serial: true,
    },
    Table {
        name: "peers",
        columns: &[
            ("org_id", Text),
            ("display_name", Text),
            ("endpoint", Text),
            ("card", Bytes),
            ("card_version", Int),
            ("ca_bundle_pem", Text),
            ("added_ms", Int),
            ("updated_ms", Int),
            ("policy", Text),
            ("state", Text),
            ("introducer", Bool),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "signing_keys",
        columns: &[
            ("key_id", Text),
            ("org_id", Text),
            ("public_key", Bytes),
            ("not_before_ms", Int),
            ("not_after_ms", Int),
            ("revoked", Bool),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "own_signing_keys",
        columns: &[
            ("key_id", Text),
            ("public_key", Bytes),
            ("not_before_ms", Int),
            ("not_after_ms", Int),
            ("revoked_ms", Int),
            ("rotation", Bytes),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "cursors",
        columns: &[
            ("upstream_org", Text),
            ("cursor", Int),
            ("updated_ms", Int),
            ("log_id", Text),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "rejections",
        columns: &[
            ("id", Int),
            ("upstream_org", Text),
            ("upstream_seq", Int),
            ("code", Text),
            ("reason", Text),
            ("envelope", Bytes),
            ("rejected_ms", Int),
        ],
        key: Some("id"),
        serial: true,
    },
    Table {
        name: "rejected_bytes",
        columns: &[("upstream_org", Text), ("kept_bytes", Int)],
        key: None,
        serial: false,
    },
    Table {
        name: "policies",
        columns: &[
            ("name", Text),
            ("version", Int),
            ("document", Text),
            ("applied_ms", Int),
            ("applied_by", Text),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "audit",
        columns: &[
            ("seq", Int),
            ("at_ms", Int),
            ("event", Text),
            ("actor", Text),
            ("partner", Text),
            ("subject", Text),
            ("rule", Text),
            ("detail", Text),
            ("prev_hash", Bytes),
            ("hash", Bytes),
        ],
        key: Some("seq"),
        serial: false,
    },
    Table {
        name: "audit_head",
        columns: &[("id", Int), ("seq", Int), ("hash", Bytes)],
        key: None,
        serial: false,
    },
    Table {
        name: "revoked_certs",
        columns: &[
            ("serial", Text),
            ("spiffe_id", Text),
            ("reason", Text),
            ("revoked_ms", Int),
            ("revoked_by", Text),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "certificates",
        columns: &[
            ("serial", Text),
            ("spiffe_id", Text),
            ("not_before_ms", Int),
            ("not_after_ms", Int),
            ("issued_ms", Int),
            ("issued_by", Text),
            ("pem", Text),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "partner_crls",
        columns: &[
            ("org_id", Text),
            ("der", Bytes),
            ("this_update_ms", Int),
            ("imported_ms", Int),
            ("imported_by", Text),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "crl_counter",
        columns: &[("id", Int), ("number", Int)],
        key: None,
        serial: false,
    },
    Table {
        name: "sent_to",
        columns: &[
            ("origin_org", Text),
            ("indicator_id", Text),
            ("recipient", Text),
            ("first_sent_ms", Int),
            ("max_version", Int),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "quarantine",
        columns: &[
            ("id", Int),
            ("upstream_org", Text),
            ("upstream_seq", Int),
            ("key_id", Text),
            ("envelope", Bytes),
            ("path", Text),
            ("received_ms", Int),
            ("due_ms", Int),
        ],
        key: Some("id"),
        serial: true,
    },
    Table {
        name: "org_cards",
        columns: &[
            ("org_id", Text),
            ("card", Bytes),
            ("card_version", Int),
            ("state", Text),
            ("via", Text),
            ("updated_ms", Int),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "witnessed_heads",
        columns: &[
            ("org_id", Text),
            ("rows", Int),
            ("head_hash", Bytes),
            ("signed_ms", Int),
            ("received_ms", Int),
            ("envelope", Bytes),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "log_identity",
        columns: &[("id", Int), ("log_id", Text)],
        key: None,
        serial: false,
    },
    Table {
        name: "publish_keys",
        columns: &[
            ("key_hash", Int),
            ("publisher", Text),
            ("key", Text),
            ("request_digest", Bytes),
            ("indicator_id", Text),
            ("version", Int),
            ("seq", Int),
            ("created_ms", Int),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "resend_requests",
        columns: &[
            ("recipient", Text),
            ("from_seq", Int),
            ("up_to_seq", Int),
            ("requested_ms", Int),
            ("requested_by", Text),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "sightings",
        columns: &[
            ("sighter", Text),
            ("origin_org", Text),
            ("indicator_id", Text),
            ("window_ms", Int),
            ("indicator_version", Int),
            ("seen_count", Int),
            ("first_seen_ms", Int),
            ("last_seen_ms", Int),
            ("reported_ms", Int),
            ("sector", Text),
            ("country", Text),
            ("received_from", Text),
            ("path", Text),
            ("envelope", Bytes),
            ("stored_ms", Int),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "sighting_outbox",
        columns: &[
            ("partner", Text),
            ("sighter", Text),
            ("origin_org", Text),
            ("indicator_id", Text),
            ("window_ms", Int),
            ("queued_ms", Int),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "sight_keys",
        columns: &[
            ("publisher", Text),
            ("key", Text),
            ("request_digest", Bytes),
            ("origin_org", Text),
            ("indicator_id", Text),
            ("window_ms", Int),
            ("created_ms", Int),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "statistics_reports",
        columns: &[
            ("reporter", Text),
            ("period", Text),
            ("period_start", Int),
            ("made_ms", Int),
            ("received_from", Text),
            ("path", Text),
            ("envelope", Bytes),
            ("stored_ms", Int),
        ],
        key: None,
        serial: false,
    },
    Table {
        name: "node_secrets",
        columns: &[("name", Text), ("secret", Bytes)],
        key: None,
        serial: false,
    },
];

/// Tables a new store already fills (made by its migrations): replaced by
/// the source's rows, and not counted when deciding whether a target is
/// empty.
const MADE_BY_MIGRATIONS: &[&str] = &["log_identity"];

/// Rows read (and written) per statement of a keyed table.
const PAGE_ROWS: i64 = 2_000;

/// One column value.
#[derive(Debug, Clone)]
enum Value {
    Int(Option<i64>),
    Int32(i32),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// What a copy moved: rows per table, in [`TABLES`] order.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// (table, rows).
    pub tables: Vec<(&'static str, u64)>,
    /// Ledger rows of the copy, verified.
    pub ledger_rows: u64,
}

impl Store {
    /// The store's tables (migration bookkeeping aside).
    async fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let names: Vec<String> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
                )
                .fetch_all(p)
                .await?
            }
            Pool::Pg(p) => {
                sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
                     AND tablename NOT LIKE '\\_sqlx%'",
                )
                .fetch_all(p)
                .await?
            }
        };
        Ok(names)
    }

    /// Rows in `table`.
    async fn count_rows(&self, tx: &mut Tx, table: &str) -> Result<u64, StoreError> {
        let text = format!("SELECT COUNT(*) FROM {table}");
        let n: i64 = on!(Tx, &mut *tx, db => {
            sqlx::query_scalar(AssertSqlSafe(text)).fetch_one(&mut **db).await?
        });
        Ok(n.max(0) as u64)
    }

    /// Copies everything this store holds into `target`, which must hold
    /// nothing yet (a new store); then checks the copy: the same number of
    /// rows in every table, and its ledger verifies. The source is read in
    /// one snapshot (a node writing to it meanwhile is not seen); the target
    /// is written in one transaction (a failed copy leaves it empty).
    pub async fn copy_into(&self, target: &Store) -> Result<CopyReport, StoreError> {
        let known: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        for name in self.table_names().await? {
            if !known.contains(&name.as_str()) {
                return Err(StoreError::Conflict(format!(
                    "the source has a table this version cannot copy ({name}); use the threatmesh version that wrote it"
                )));
            }
        }
        let mut source = self.pool.begin().await?;
        let (writing, mut tx) = target.write_tx().await?;
        for t in TABLES {
            if MADE_BY_MIGRATIONS.contains(&t.name) {
                continue;
            }
            let n = target.count_rows(&mut tx, t.name).await?;
            if n > 0 {
                return Err(StoreError::Conflict(format!(
                    "the target store is not empty ({} holds {n} rows); copy into a new, empty store",
                    t.name
                )));
            }
        }
        let mut report = CopyReport::default();
        for t in TABLES {
            if MADE_BY_MIGRATIONS.contains(&t.name) {
                on!(Tx, &mut tx, db => {
                    sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", t.name)))
                        .execute(&mut **db)
                        .await?;
                });
            }
            let mut copied = 0u64;
            let mut after = i64::MIN;
            loop {
                let rows = read_page(&mut source, t, after).await?;
                let n = rows.len();
                if n == 0 {
                    break;
                }
                if let Some(Value::Int(Some(last))) = rows.last().and_then(|r| r.first()) {
                    after = *last;
                }
                write_rows(&mut tx, t, &rows).await?;
                copied += n as u64;
                if t.key.is_none() || (n as i64) < PAGE_ROWS {
                    break;
                }
            }
            if t.serial
                && let (Tx::Pg(db), Some(key)) = (&mut tx, t.key)
            {
                // The next number after the copied ones.
                let text = format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', '{key}'), \
                     GREATEST((SELECT MAX({key}) FROM {0}), 1), (SELECT MAX({key}) FROM {0}) IS NOT NULL)",
                    t.name
                );
                sqlx::query(AssertSqlSafe(text)).execute(&mut **db).await?;
            }
            report.tables.push((t.name, copied));
        }
        tx.commit().await?;
        drop(writing);
        source.commit().await?;
        // The check: every table as long as the source's, and the ledger
        // chain intact in the copy.
        let mut source = self.pool.begin().await?;
        let mut copy = target.pool.begin().await?;
        for (name, copied) in &report.tables {
            let there = target.count_rows(&mut copy, name).await?;
            let here = self.count_rows(&mut source, name).await?;
            if there != *copied || here < *copied {
                return Err(StoreError::Conflict(format!(
                    "the copy of {name} holds {there} rows, the source {here}; the copy is incomplete"
                )));
            }
        }
        copy.commit().await?;
        source.commit().await?;
        report.ledger_rows = target
            .verify_audit()
            .await?
            .map_err(|b| StoreError::Conflict(format!("the copy's ledger does not verify: {b}")))?;
        target.bump(target.latest_seq().await?);
        Ok(report)
    }
}

/// Up to [`PAGE_ROWS`] rows of `t` after key `after` (keyed tables), or all
/// of them.
async fn read_page(tx: &mut Tx, t: &Table, after: i64) -> Result<Vec<Vec<Value>>, StoreError> {
    let columns: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let text = match t.key {
        Some(key) => format!(
            "SELECT {} FROM {} WHERE {key} > ? ORDER BY {key} LIMIT {PAGE_ROWS}",
            columns.join(", "),
            t.name
        ),
        None => format!("SELECT {} FROM {}", columns.join(", "), t.name),
    };
    let rows = on!(Tx, &mut *tx, db => {
        let text = <DB as Dialect>::sql_owned(text);
        let mut q = sqlx::query(AssertSqlSafe(text));
        if t.key.is_some() {
            q = q.bind(after);
        }
        let rows = q.fetch_all(&mut **db).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(t.columns.len());
            for (i, (_, kind)) in t.columns.iter().enumerate() {
                values.push(match kind {
                    Int => Value::Int(row.try_get(i)?),
                    Int32 => Value::Int32(row.try_get(i)?),
                    Text => Value::Text(row.try_get(i)?),
                    Bytes => Value::Bytes(row.try_get(i)?),
                    Bool => Value::Bool(row.try_get(i)?),
                });
            }
            out.push(values);
        }
        out
    });
    Ok(rows)
}

/// Inserts `rows` of `t`, in statements of at most ~30,000 bound values.
async fn write_rows(tx: &mut Tx, t: &Table, rows: &[Vec<Value>]) -> Result<(), StoreError> {
    let columns: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let per_statement = (30_000 / t.columns.len()).max(1);
    for chunk in rows.chunks(per_statement) {
        on!(Tx, &mut *tx, db => {
            let mut q = sqlx::QueryBuilder::<DB>::new(format!(
                "INSERT INTO {} ({}) ",
                t.name,
                columns.join(", ")
            ));
            q.push_values(chunk, |mut b, row| {
                for v in row {
                    match v {
                        Value::Int(v) => b.push_bind(*v),
                        Value::Int32(v) => b.push_bind(*v),
                        Value::Text(v) => b.push_bind(v.clone()),
                        Value::Bytes(v) => b.push_bind(v.clone()),
                        Value::Bool(v) => b.push_bind(*v),
                    };
                }
            });
            q.build().execute(&mut **db).await?;
        });
    }
    Ok(())
}

//! `infragpt vault rotate` and `infragpt vault status`.
//!
//! Rotation re-encrypts every credential not sealed with the active key, in batches of
//! `batch` rows. It is resumable: each row is moved by a compare-and-swap on its key id, so an
//! interrupted run is simply run again, and a row refreshed concurrently is never overwritten.
//! Old keys can be removed from `vault.keys` once [`status`] shows no row uses them.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use crate::crypto::vault::{CredentialAad, KeyRing};
use crate::db::Database;
use crate::db::StoreError;
use crate::integrations::credentials::PgCredentials;

/// Counts of a rotation run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RotateReport {
    /// The key rows are now sealed with.
    pub active_key: String,
    /// Rows examined (not under the active key when read).
    pub examined: u64,
    /// Rows re-encrypted.
    pub rotated: u64,
    /// Rows changed by someone else meanwhile (already moved or refreshed): skipped.
    pub skipped: u64,
    /// Rows that could not be opened (unknown key id or failed authentication): left as is.
    pub failed: u64,
    /// Ids of the failed rows (to investigate; never values).
    pub failed_ids: Vec<Uuid>,
    /// Batches run.
    pub batches: u64,
}

/// Rows per key id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VaultStatus {
    /// The key new credentials are sealed with (`None` when no key ring was given).
    pub active_key: Option<String>,
    /// Key id → number of credential rows sealed with it.
    pub rows_per_key: BTreeMap<String, i64>,
    /// Key ids in use that are not the active one (rotation pending).
    pub keys_pending_rotation: Vec<String>,
}

/// Re-encrypts every credential under the active key, `batch` rows at a time (at least 1).
pub async fn rotate(
    db: &Database,
    keyring: &KeyRing,
    batch: usize,
) -> Result<RotateReport, StoreError> {
    let table = PgCredentials::new(db.pool().clone());
    let active = keyring.active_key_id().as_str().to_owned();
    let limit = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let mut report = RotateReport {
        active_key: active.clone(),
        ..RotateReport::default()
    };
    let mut cursor: Option<Uuid> = None;
    loop {
        let rows = table.batch_not_under_key(&active, cursor, limit).await?;
        if rows.is_empty() {
            break;
        }
        report.batches += 1;
        for row in &rows {
            report.examined += 1;
            let aad = CredentialAad {
                integration_id: row.integration_id,
                credential_type: &row.credential_type,
            };
            match keyring.reseal_if_needed(&aad, &row.sealed) {
                Ok(Some(sealed)) => {
                    if table
                        .reseal(row.id, row.sealed.key_id.as_str(), &sealed)
                        .await?
                    {
                        report.rotated += 1;
                    } else {
                        report.skipped += 1;
                    }
                }
                Ok(None) => report.skipped += 1,
                Err(error) => {
                    tracing::error!(credential_id = %row.id, key_id = %row.sealed.key_id, %error, "credential could not be re-encrypted");
                    report.failed += 1;
                    report.failed_ids.push(row.id);
                }
            }
        }
        cursor = rows.last().map(|r| r.id);
        tracing::info!(
            batch = report.batches,
            rotated = report.rotated,
            failed = report.failed,
            "vault rotation batch done"
        );
    }
    Ok(report)
}

/// How many credential rows each key id seals; `keyring` (optional) names the active key.
pub async fn status(db: &Database, keyring: Option<&KeyRing>) -> Result<VaultStatus, StoreError> {
    let table = PgCredentials::new(db.pool().clone());
    let rows_per_key: BTreeMap<String, i64> = table.count_by_key().await?.into_iter().collect();
    let active_key = keyring.map(|k| k.active_key_id().as_str().to_owned());
    let keys_pending_rotation = rows_per_key
        .keys()
        .filter(|k| active_key.as_deref() != Some(k.as_str()))
        .cloned()
        .collect();
    Ok(VaultStatus {
        active_key,
        rows_per_key,
        keys_pending_rotation,
    })
}

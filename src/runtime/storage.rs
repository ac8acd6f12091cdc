//! What the node keeps and how much room it takes (`GET /api/admin/storage`).

use crate::auth::Principal;
use crate::error::Result;
use crate::protocol::storage::StorageReport;
use crate::rbac::Action;
use crate::runtime::Runtime;

impl Runtime {
    /// Rows, bytes and oldest item per kind of data, the database's size,
    /// and the last prune (`admin:system`).
    pub async fn storage(&self, p: &Principal) -> Result<StorageReport> {
        self.authorize(p, Action::StorageRead).await?;
        let mut report = self.store.storage().await?;
        // The store keeps the last run (of any node of a shared store), so
        // that it survives a restart; this node's memory stands in should
        // storing it have failed.
        report.last_prune = match self.store.last_prune().await? {
            Some(run) => Some(run),
            None => self.pruner().last_run(),
        };
        Ok(report)
    }
}

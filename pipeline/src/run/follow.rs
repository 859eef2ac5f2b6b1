//! Following the catalog: the pipeline moves to a newer catalog revision only between commits,
//! and only after a state snapshot at the committed sequence names it (see `crate::catalog`).

use anyhow::Result;
use meterflow_catalog::{Catalog, Revision};
use std::time::{Duration, Instant};

use super::{checked_revision, Pipeline};
use crate::config::Reference;

/// How often a running pipeline asks the catalog stream for a newer revision.
const CATALOG_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Subscribes to the catalog's change notices; `None` (logged) when the broker refuses, and
/// changes are then asked for every second.
pub(super) async fn subscribe_notices(
    broker: &meterflow_ingest::Broker,
    config: &crate::config::Config,
) -> Option<async_nats::Subscriber> {
    match broker.client().subscribe(config.nats.catalog_subject.clone()).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to catalog changes; asking for them every second instead");
            None
        }
    }
}

/// The newest revision, checked against the one the replay decides under, to move to once the
/// replay is done; `None` when it is the same, or refused (logged).
pub(super) fn next_after_replay(
    config: &crate::config::Config,
    (revision, now): (Revision, &Catalog),
    (latest, newest): (Revision, Catalog),
) -> Option<(Revision, Catalog, Reference)> {
    tracing::info!(revision, newest = latest, "catalog revision of the replay");
    if latest == revision {
        return None;
    }
    match checked_revision(config, now, &newest, latest) {
        Ok(reference) => Some((latest, newest, reference)),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), revision = latest, "the newest catalog revision is refused; \
                deciding under revision {revision}");
            None
        }
    }
}

impl Pipeline {
    /// The first turn live (the replay, if any, has rebuilt the committed state): moves to the
    /// newer revision found at start, or, without a snapshot to replay from next time, saves one
    /// naming the revision in force.
    pub(super) async fn enter_live(&mut self) -> Result<()> {
        if let Some((revision, catalog, reference)) = self.catalog_next.take() {
            self.switch_catalog(revision, catalog, reference).await?;
        } else if !self.restored_snapshot {
            self.snapshot().await?;
        }
        Ok(())
    }

    /// Moves the stages to `revision`: first a snapshot at the committed sequence naming it
    /// (a replay from there decides under it), then the new reference data. A snapshot that
    /// cannot be saved leaves the revision as it is, to be tried again.
    pub(super) async fn switch_catalog(
        &mut self,
        revision: Revision,
        catalog: Catalog,
        reference: Reference,
    ) -> Result<()> {
        // A crash after the save restarts from the snapshot just saved, under the new revision.
        if !self.save_snapshot(revision).await? {
            return Ok(()); // staying at the revision in force; tried again on the next turn
        }
        tracing::info!(
            from = self.revision,
            to = revision,
            committed_seq = self.committed_seq,
            "catalog revision in force for the messages after the committed sequence"
        );
        self.core.set_reference(reference);
        self.revision = revision;
        self.catalog_now = catalog;
        self.ops.metrics.catalog_revision.set(i64::try_from(revision).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Whether the catalog changed since the pipeline last looked (a notice arrived, or one
    /// arrived earlier and was not acted on), without waiting.
    pub(super) fn catalog_changed(&mut self) -> bool {
        if let Some(notices) = self.catalog_notices.as_mut() {
            while let Some(Some(_)) = futures::FutureExt::now_or_never(futures::StreamExt::next(notices)) {
                self.catalog_noticed = true;
            }
        }
        self.catalog_noticed && !self.replaying
    }

    /// Between commits, at most every second (or at once after a notice): asks the catalog
    /// stream for a newer revision and moves to it if it passes its checks.
    pub(super) async fn follow_catalog(&mut self) -> Result<()> {
        if self.catalog_checked_at.is_some_and(|t| t.elapsed() < CATALOG_CHECK_EVERY) && !self.catalog_changed() {
            return Ok(());
        }
        self.follow_catalog_now().await
    }

    /// Asks the catalog stream for a newer revision now and moves to it if it passes its
    /// checks. A refused revision is logged once and the pipeline keeps the one in force; a
    /// broker error is left for the next turn. Only between commits.
    pub(super) async fn follow_catalog_now(&mut self) -> Result<()> {
        if self.pending_last.is_some() || self.replaying {
            return Ok(());
        }
        self.catalog_checked_at = Some(Instant::now());
        let latest = match self.catalog.revision().await {
            Ok(latest) => latest,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask the catalog stream for a newer revision; asking again");
                return Ok(());
            }
        };
        self.catalog_noticed = false;
        if latest <= self.revision || self.catalog_refused == Some(latest) {
            return Ok(());
        }
        let changes = match self.catalog.change_sets(self.revision, latest).await {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(error = %e, latest, "cannot read the newer catalog revisions; asking again");
                return Ok(());
            }
        };
        let mut next = self.catalog_now.clone();
        for (_, change) in &changes {
            next.apply(&change.records);
        }
        match checked_revision(&self.config, &self.catalog_now, &next, latest) {
            Ok(reference) => self.switch_catalog(latest, next, reference).await,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), refused = latest, "a catalog revision is refused; \
                    deciding under revision {}", self.revision);
                self.catalog_refused = Some(latest);
                Ok(())
            }
        }
    }
}

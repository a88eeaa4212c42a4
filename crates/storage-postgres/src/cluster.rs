//! The cluster's ground truth in PostgreSQL: who is a member, and who leases which shard.
//!
//! - **Membership.** Each node upserts its row in `members` with a heartbeat. A node whose
//!   heartbeat is older than the caller's time-to-live is not a live member.
//! - **Leases.** A shard's lease is its `shards` row: `owner` holds it until `expires_at`.
//!   Acquiring renews the caller's own unexpired leases (same epoch), takes shards that are
//!   free or expired (a new epoch, so every write of the previous owner is fenced from then
//!   on), and leaves shards that another node holds.
//!
//! Every time is the database's (`clock_timestamp()`), never a node's, so nodes with skewed
//! clocks agree on who holds what. A node must stop writing before its lease can expire by
//! its own monotonic clock (with a margin); fencing keeps it safe if it does not: once another
//! node took the shard, its writes are refused.

use std::time::Duration;

use perennial_storage::{Directory, Error, Lease, Member};
use perennial_types::{Epoch, SHARDS, ShardId};

use crate::PostgresStore;
use crate::errors::map_err;
use crate::schema::NOW_MS;

#[async_trait::async_trait]
impl Directory for PostgresStore {
    /// Records that `node`, reachable at `address`, is alive now.
    async fn heartbeat(&self, node: &str, address: &str, build: &str) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO members (node, address, joined_at, heartbeat_at, build)
             VALUES ($1, $2, {NOW_MS}, {NOW_MS}, $3)
             ON CONFLICT (node) DO UPDATE SET address = excluded.address,
                                              heartbeat_at = excluded.heartbeat_at,
                                              build = excluded.build"
        );
        self.reader()
            .await?
            .execute(&sql, &[&node, &address, &build])
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// The members whose last heartbeat is at most `ttl` old, by name.
    async fn members(&self, ttl: Duration) -> Result<Vec<Member>, Error> {
        let sql = format!(
            "SELECT node, address, {NOW_MS} - heartbeat_at, build FROM members
              WHERE heartbeat_at >= {NOW_MS} - $1 ORDER BY node"
        );
        let rows = self
            .reader()
            .await?
            .query(&sql, &[&millis(ttl)])
            .await
            .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| Member::new(r.get(0), r.get(1), r.get(2)).with_build(r.get(3)))
            .collect())
    }

    /// Leaves the cluster: forgets the member and releases every shard it leases.
    async fn leave(&self, node: &str) -> Result<(), Error> {
        let mut writer = self.writer().await?;
        let tx = writer.client.transaction().await.map_err(map_err)?;
        tx.execute(
            "UPDATE shards SET owner = NULL, expires_at = NULL WHERE owner = $1",
            &[&node],
        )
        .await
        .map_err(map_err)?;
        tx.execute("DELETE FROM members WHERE node = $1", &[&node])
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    /// Leases `shards` to `node` for `ttl` from now (by the database's clock): renews the
    /// ones it holds, takes the free and expired ones with a new epoch, and skips the ones
    /// another node holds. Returns the leases `node` holds among `shards`, in shard order.
    async fn acquire(
        &self,
        node: &str,
        shards: &[ShardId],
        lease: Duration,
    ) -> Result<Vec<Lease>, Error> {
        let ttl = lease;
        if let Some(bad) = shards.iter().find(|s| s.0 >= SHARDS) {
            return Err(Error::Backend(format!("{bad} does not exist")));
        }
        let shards: Vec<i32> = shards
            .iter()
            .map(|s| i32::try_from(s.0).unwrap_or(i32::MAX))
            .collect();
        // One statement: rows locked in shard order, each renewed, taken or left as it is.
        let sql = format!(
            "WITH current AS (
                 SELECT shard, epoch, owner, expires_at FROM shards
                  WHERE shard = ANY($1) ORDER BY shard FOR UPDATE SKIP LOCKED),
             decided AS (
                 SELECT shard,
                        CASE WHEN owner = $2 AND expires_at > {NOW_MS} THEN epoch
                             ELSE epoch + 1 END AS epoch,
                        NOT coalesce(owner = $2 AND expires_at > {NOW_MS}, false) AS taken
                   FROM current
                  WHERE owner IS NULL OR expires_at IS NULL OR expires_at <= {NOW_MS}
                     OR owner = $2)
             UPDATE shards AS s
                SET epoch = d.epoch, owner = $2, claimed_at = {NOW_MS},
                    expires_at = {NOW_MS} + $3
               FROM decided AS d
              WHERE s.shard = d.shard
          RETURNING s.shard, s.epoch, d.taken"
        );
        let writer = self.writer().await?;
        let rows = writer
            .client
            .query(&sql, &[&shards, &node, &millis(ttl)])
            .await
            .map_err(map_err)?;
        let mut leases: Vec<Lease> = rows
            .iter()
            .map(|r| {
                let shard: i32 = r.get(0);
                let epoch: i64 = r.get(1);
                Lease::new(
                    ShardId(u32::try_from(shard).unwrap_or(u32::MAX)),
                    Epoch(u64::try_from(epoch).unwrap_or(0)),
                    r.get(2),
                )
            })
            .collect();
        leases.sort_by_key(|l| l.shard);
        Ok(leases)
    }

    /// The unexpired leases, by the database's clock: each leased shard and its owner, in
    /// shard order. Nodes route calls by it.
    async fn owners(&self) -> Result<Vec<(ShardId, String)>, Error> {
        let sql = format!(
            "SELECT shard, owner FROM shards
              WHERE owner IS NOT NULL AND expires_at > {NOW_MS} ORDER BY shard"
        );
        let rows = self
            .reader()
            .await?
            .query(&sql, &[])
            .await
            .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| {
                let shard: i32 = r.get(0);
                (ShardId(u32::try_from(shard).unwrap_or(u32::MAX)), r.get(1))
            })
            .collect())
    }

    /// Gives up `node`'s leases of `shards` now, so another node may take them at once (a
    /// graceful handoff, after the shards' entities were passivated and their writes flushed).
    async fn release(&self, node: &str, shards: &[ShardId]) -> Result<(), Error> {
        let shards: Vec<i32> = shards
            .iter()
            .map(|s| i32::try_from(s.0).unwrap_or(i32::MAX))
            .collect();
        let writer = self.writer().await?;
        writer
            .client
            .execute(
                "UPDATE shards SET owner = NULL, expires_at = NULL
                  WHERE shard = ANY($1) AND owner = $2",
                &[&shards, &node],
            )
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

//! Zones across hosts (`rnet zone create NAME --distributed`, `rnetd --etcd`): the zone's
//! definition and its hosts live in etcd, the data path is the kernel's VXLAN, routed between
//! hosts as flannel's "vxlan" backend does (design in `docs/architecture.md`, "Zones across
//! hosts").
//!
//! - `keys.rs`: the key layout and records, slice allocation, the peers a snapshot asks for
//!   (pure);
//! - `vxlan.rs`: the VXLAN device and the per-host route, neighbour and FDB entries;
//! - this file: [`Fabric`], the etcd client (crate `etcd-client`, gRPC), the claims made when
//!   a host joins a zone, and one task per zone that keeps the node's lease alive and programs
//!   the data path from a watch of the zone's hosts.
//!
//! etcd is only needed to join: a zone this host holds a slice of keeps working while etcd is
//! away (the kernel keeps the entries, members attach as to a local zone), and its task
//! reconnects, renews or re-claims, and resynchronises when etcd is back.

pub mod filter;
pub mod keys;
pub mod vxlan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use ipnetwork::Ipv4Network;
use tracing::{debug, info, warn};

use self::keys::{HostRecord, Peer, ZoneRecord};
use self::vxlan::Vtep;
use crate::api::{ApiError, ErrorKind, SpanHost, SpanInfo, ZoneName};
use crate::rtnl::Rtnl;

/// `rnetd`'s options for zones across hosts.
#[derive(Debug, Clone)]
pub struct Options {
    /// etcd client URLs (`--etcd`).
    pub endpoints: Vec<String>,
    /// This host's node name (`--node-name`).
    pub node: String,
    /// This host's underlay address (from `--underlay`).
    pub underlay: Ipv4Addr,
    /// The TTL of the node's lease (`--etcd-ttl`).
    pub ttl: Duration,
    /// Where the last programmed peers of each zone are kept (`RUNTIME_DIR/span/`).
    pub dir: PathBuf,
    /// `--underlay-filter`: accept VXLAN only from the hosts of our zones (`filter.rs`).
    pub underlay_filter: bool,
}

/// How long one etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between attempts of a zone's task while etcd is away.
const RETRY: Duration = Duration::from_millis(500);
/// How soon a sync that could not program every peer runs again, without waiting for the next
/// change in etcd.
const RESYNC: Duration = Duration::from_secs(1);

/// A failure talking to etcd, for the one error line a client sees.
fn unreachable(endpoints: &[String], e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorKind::Internal,
        format!("etcd ({}) unreachable: {e}", endpoints.join(",")),
    )
}

/// What joining a zone claimed in etcd.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    /// The zone's record.
    pub record: ZoneRecord,
    /// This node's slice.
    pub slice: Ipv4Network,
    /// The lease the node's keys are attached to.
    pub lease: i64,
}

/// A zone this host takes part in.
struct ZoneRun {
    record: ZoneRecord,
    slice: Ipv4Network,
    /// The peers programmed now, and the hosts last seen (for `rnet zone show`).
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::AbortHandle,
    /// ifindex of `vx-ZONE`.
    index: u32,
}

#[derive(Default)]
struct Shared {
    peers: BTreeSet<Peer>,
    hosts: BTreeMap<String, HostRecord>,
}

/// The etcd side and the data path of every zone across hosts on this host.
pub struct Fabric<V: Vtep = Rtnl> {
    opts: Options,
    vtep: Arc<V>,
    zones: Mutex<BTreeMap<ZoneName, ZoneRun>>,
    /// The underlay addresses the filter table holds now (`None`: not written by us yet).
    filtered: tokio::sync::Mutex<Option<BTreeSet<Ipv4Addr>>>,
}

impl<V: Vtep> Fabric<V> {
    /// A fabric with no zone yet; etcd is connected per request.
    pub fn new(opts: Options, vtep: V) -> Arc<Self> {
        Arc::new(Self {
            opts,
            vtep: Arc::new(vtep),
            zones: Mutex::new(BTreeMap::new()),
            filtered: tokio::sync::Mutex::new(None),
        })
    }

    /// This host's node name.
    pub fn node(&self) -> &str {
        &self.opts.node
    }

    async fn client(&self) -> Result<Client, ApiError> {
        connect(&self.opts.endpoints).await
    }

    /// Joins zone `zone` in etcd: creates its record if absent (else checks the request
    /// agrees), and claims a slice for this node with a fresh lease: `prefer` (the slice it
    /// held before) or this node's slice still in etcd, else the first free one that holds
    /// none of `in_use`. Fails with one clear line when etcd cannot be reached.
    pub async fn join(
        &self,
        zone: &ZoneName,
        subnet: Option<Ipv4Network>,
        vni: Option<u32>,
        prefer: Option<Ipv4Network>,
        in_use: &[Ipv4Network],
    ) -> Result<Joined, ApiError> {
        let mut c = self.client().await?;
        let eps = &self.opts.endpoints;
        let fresh = ZoneRecord::new(zone, subnet, vni);
        let text = serde_json::to_string(&fresh).map_err(|e| unreachable(eps, e))?;
        let key = keys::zone_key(zone);
        let vni_key = keys::vni_key(fresh.vni);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(vni_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.clone(), text, None),
                TxnOp::put(vni_key.clone(), zone.to_string(), None),
            ])
            .or_else([
                TxnOp::get(key.clone(), None),
                TxnOp::get(vni_key.clone(), None),
            ]);
        let resp = c.txn(txn).await.map_err(|e| unreachable(eps, e))?;
        let record = if resp.succeeded() {
            info!(%zone, subnet = %fresh.subnet, vni = fresh.vni, "distributed zone defined in etcd");
            fresh
        } else {
            let ops = resp.op_responses();
            let Some(value) = nth_value(&ops, 0) else {
                // The zone is new but its VNI is another zone's.
                let owner = nth_value(&ops, 1)
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_else(|| "another zone".into());
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "zone {zone}: VNI {} is zone {owner}'s in etcd: choose another with --vni",
                        fresh.vni
                    ),
                ));
            };
            let record: ZoneRecord = serde_json::from_slice(&value)
                .map_err(|e| ApiError::new(ErrorKind::Internal, format!("{key} in etcd: {e}")))?;
            record
                .agrees(subnet, vni)
                .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("zone {zone}: {e}")))?;
            record
        };
        let lease = c
            .lease_grant(self.opts.ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(|e| unreachable(eps, e))?
            .id();
        let mine = match prefer {
            Some(s) => Some(s),
            None => self.held_slice(&mut c, zone).await?,
        };
        let slice = self
            .claim(&mut c, zone, &record, mine, in_use, lease)
            .await?;
        Ok(Joined {
            record,
            slice,
            lease,
        })
    }

    /// Whether etcd defines zone `zone` (a zone across hosts); an unreachable etcd is an error
    /// naming the zone.
    pub async fn defined(&self, zone: &ZoneName) -> Result<bool, ApiError> {
        let fail = |e: ApiError| {
            ApiError::new(
                e.kind,
                format!(
                    "zone {zone}: cannot tell whether it spans hosts: {}",
                    e.message
                ),
            )
        };
        let mut c = self.client().await.map_err(fail)?;
        let resp = c
            .get(
                keys::zone_key(zone),
                Some(GetOptions::new().with_keys_only()),
            )
            .await
            .map_err(|e| fail(unreachable(&self.opts.endpoints, e)))?;
        Ok(!resp.kvs().is_empty())
    }

    /// The slice this node's host key names in etcd, if any.
    async fn held_slice(
        &self,
        c: &mut Client,
        zone: &ZoneName,
    ) -> Result<Option<Ipv4Network>, ApiError> {
        let resp = c
            .get(keys::host_key(zone, &self.opts.node), None)
            .await
            .map_err(|e| unreachable(&self.opts.endpoints, e))?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<HostRecord>(kv.value()).ok())
            .map(|h| h.slice))
    }

    /// Claims a slice under `lease` and writes this node's host key: `mine` if it is free or
    /// already this node's, else the first free one. One transaction per attempt: the slice
    /// key is created only if absent (`create_revision == 0`) or kept if its value is this
    /// node, so of two hosts racing for a slice exactly one wins; the loser tries the next.
    async fn claim(
        &self,
        c: &mut Client,
        zone: &ZoneName,
        record: &ZoneRecord,
        mine: Option<Ipv4Network>,
        in_use: &[Ipv4Network],
        lease: i64,
    ) -> Result<Ipv4Network, ApiError> {
        let eps = &self.opts.endpoints;
        let node = &self.opts.node;
        let mut lost = BTreeSet::new();
        let mut want = mine.filter(|s| record.subnet.contains(s.network()));
        for _ in 0..64 {
            let taken = match want {
                Some(_) => BTreeSet::new(),
                None => {
                    let resp = c
                        .get(
                            keys::slices_prefix(zone),
                            Some(GetOptions::new().with_prefix()),
                        )
                        .await
                        .map_err(|e| unreachable(eps, e))?;
                    let mut taken: BTreeSet<Ipv4Network> = resp
                        .kvs()
                        .iter()
                        .filter(|kv| kv.value() != node.as_bytes())
                        .filter_map(|kv| {
                            let key = kv.key_str().ok()?;
                            keys::parse_slice(key.rsplit('/').next()?)
                        })
                        .collect();
                    taken.extend(lost.iter().copied());
                    taken
                }
            };
            let slice = match want.take() {
                Some(s) => s,
                None => keys::free_slice(record, &taken, in_use).ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::PoolExhausted,
                        format!(
                            "zone {zone}: no free /{} slice left in {}",
                            record.slice_prefix, record.subnet
                        ),
                    )
                })?,
            };
            let host = HostRecord {
                underlay: self.opts.underlay,
                vtep_mac: keys::vtep_mac(zone, node),
                slice,
            };
            let host_text = serde_json::to_string(&host).map_err(|e| unreachable(eps, e))?;
            let skey = keys::slice_key(zone, slice);
            let put =
                |k: String, v: String| TxnOp::put(k, v, Some(PutOptions::new().with_lease(lease)));
            let ops = [
                put(skey.clone(), node.clone()),
                put(keys::host_key(zone, node), host_text),
            ];
            // Free, or ours (a restart within the lease's TTL, or a renewal).
            for compare in [
                Compare::create_revision(skey.clone(), CompareOp::Equal, 0),
                Compare::value(skey.clone(), CompareOp::Equal, node.as_bytes().to_vec()),
            ] {
                let txn = Txn::new().when([compare]).and_then(ops.clone());
                if c.txn(txn)
                    .await
                    .map_err(|e| unreachable(eps, e))?
                    .succeeded()
                {
                    info!(%zone, %slice, node = %node, "claimed slice");
                    return Ok(slice);
                }
            }
            debug!(%zone, %slice, "slice taken by another host; trying the next");
            lost.insert(slice);
        }
        Err(ApiError::new(
            ErrorKind::Internal,
            format!("zone {zone}: could not claim a slice (too many races)"),
        ))
    }

    /// Builds the zone's VXLAN device (kept if it exists: its entries are the data path while
    /// etcd is away) and starts its task: the lease kept alive (`lease`, or a new claim of
    /// `slice`), the data path programmed from a watch of the zone's hosts. `prepare` gets the
    /// device's ifindex before the task starts (its address, up: the kernel refuses routes
    /// through a device that is down, "Network is down"). Returns the device's ifindex.
    pub async fn activate(
        self: &Arc<Self>,
        zone: &ZoneName,
        record: ZoneRecord,
        slice: Ipv4Network,
        lease: Option<i64>,
        prepare: impl AsyncFnOnce(u32) -> Result<(), ApiError>,
    ) -> Result<u32, ApiError> {
        let name = vxlan::device_name(zone);
        let mac = keys::vtep_mac(zone, &self.opts.node);
        let (index, created) = self
            .vtep
            .add_vxlan(&name, record.vni, self.opts.underlay, mac)
            .await
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        prepare(index).await?;
        // What the kernel holds: the saved peers on a device that survived, none on a new one.
        let peers = if created {
            BTreeSet::new()
        } else {
            self.load_peers(zone)
        };
        let shared = Arc::new(Mutex::new(Shared {
            peers,
            hosts: BTreeMap::new(),
        }));
        let me = Arc::clone(self);
        let task = {
            let zone = zone.clone();
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                me.run(zone, record, slice, index, lease, shared).await;
            })
            .abort_handle()
        };
        let old = lock(&self.zones).insert(
            zone.clone(),
            ZoneRun {
                record,
                slice,
                shared,
                task,
                index,
            },
        );
        if let Some(old) = old {
            old.task.abort();
        }
        self.refresh_filter().await;
        info!(%zone, vxlan = %name, vni = record.vni, %slice, "distributed zone active");
        Ok(index)
    }

    /// Leaves zone `zone`: stops its task, deletes its keys (its slice's, or `claimed` for a
    /// join that never became active; best effort: an unreachable etcd lets them expire with
    /// the lease), and removes the VXLAN device.
    pub async fn leave(
        &self,
        zone: &ZoneName,
        claimed: Option<Ipv4Network>,
        delete: impl AsyncFnOnce(&str),
    ) {
        let run = lock(&self.zones).remove(zone);
        if let Some(run) = &run {
            run.task.abort();
        }
        let node = self.opts.node.clone();
        let eps = self.opts.endpoints.clone();
        let slice = run.as_ref().map(|r| r.slice).or(claimed);
        let zone2 = zone.clone();
        let cleanup = async move {
            let mut c = connect(&eps).await.ok()?;
            let mut ops = vec![TxnOp::delete(keys::host_key(&zone2, &node), None)];
            if let Some(s) = slice {
                ops.push(TxnOp::delete(keys::slice_key(&zone2, s), None));
            }
            c.txn(Txn::new().and_then(ops)).await.ok()
        };
        if tokio::time::timeout(REQUEST_TIMEOUT * 2, cleanup)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            warn!(%zone, "could not delete this host's keys in etcd; they expire with its lease");
        }
        delete(&vxlan::device_name(zone)).await;
        let _ = std::fs::remove_file(self.peers_file(zone));
        self.refresh_filter().await;
        info!(%zone, "left distributed zone");
    }

    /// The API's view of zone `zone`'s span, if this host takes part in it.
    pub fn info(&self, zone: &ZoneName) -> Option<SpanInfo> {
        let zones = lock(&self.zones);
        let run = zones.get(zone)?;
        let shared = lock(&run.shared);
        let mut hosts: Vec<SpanHost> = shared
            .hosts
            .iter()
            .map(|(node, h)| SpanHost {
                node: node.clone(),
                underlay: h.underlay,
                slice: h.slice,
            })
            .collect();
        if !shared.hosts.contains_key(&self.opts.node) {
            hosts.push(SpanHost {
                node: self.opts.node.clone(),
                underlay: self.opts.underlay,
                slice: run.slice,
            });
        }
        Some(SpanInfo {
            subnet: run.record.subnet,
            vni: run.record.vni,
            node: self.opts.node.clone(),
            hosts,
        })
    }

    /// The ifindex of zone `zone`'s VXLAN device, if active.
    pub fn device(&self, zone: &ZoneName) -> Option<u32> {
        lock(&self.zones).get(zone).map(|r| r.index)
    }

    /// The zone's task: forever (until aborted), a session with etcd, and a pause after each
    /// failed one. The data path is never torn down for etcd's absence.
    async fn run(
        self: Arc<Self>,
        zone: ZoneName,
        record: ZoneRecord,
        slice: Ipv4Network,
        index: u32,
        mut lease: Option<i64>,
        shared: Arc<Mutex<Shared>>,
    ) {
        let mut reported = false;
        loop {
            match self
                .session(&zone, &record, slice, index, &mut lease, &shared)
                .await
            {
                Ok(()) => reported = false,
                Err(e) if !reported => {
                    warn!(%zone, error = %e.message, "etcd session ended; the data path stays as it is, retrying");
                    reported = true;
                }
                Err(e) => debug!(%zone, error = %e.message, "etcd still away"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One session: make sure the lease and keys exist, sync the data path to a snapshot, then
    /// follow the watch and keep the lease alive until something fails.
    async fn session(
        &self,
        zone: &ZoneName,
        record: &ZoneRecord,
        slice: Ipv4Network,
        index: u32,
        lease: &mut Option<i64>,
        shared: &Mutex<Shared>,
    ) -> Result<(), ApiError> {
        let eps = &self.opts.endpoints;
        let mut c = self.client().await?;
        let err = |e: etcd_client::Error| unreachable(eps, e);
        let id = match *lease {
            Some(id) => id,
            None => {
                let id = c
                    .lease_grant(self.opts.ttl.as_secs().max(1) as i64, None)
                    .await
                    .map_err(err)?
                    .id();
                let got = self
                    .claim(&mut c, zone, record, Some(slice), &[], id)
                    .await?;
                if got != slice {
                    // Another host took our slice while we were away: keep ours running
                    // (members use it) and say so; an admin must resolve it.
                    warn!(%zone, %slice, other = %got, "this host's slice was taken while etcd was away");
                }
                *lease = Some(id);
                id
            }
        };
        let (mut keeper, mut alive) = c.lease_keep_alive(id).await.map_err(err)?;
        keeper.keep_alive().await.map_err(err)?;
        match alive.message().await.map_err(err)? {
            Some(r) if r.ttl() > 0 => {}
            _ => {
                // Expired while etcd or we were away: claim again with a new lease.
                *lease = None;
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    "lease expired; claiming again",
                ));
            }
        }
        let snapshot = self.snapshot(&mut c, zone).await?;
        let resync = tokio::time::sleep(RESYNC);
        tokio::pin!(resync);
        let mut incomplete = !self.sync(zone, record, index, snapshot.1, shared).await;
        if incomplete {
            resync.as_mut().reset(tokio::time::Instant::now() + RESYNC);
        }
        let mut watch = c
            .watch(
                keys::hosts_prefix(zone),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(snapshot.0 + 1),
                ),
            )
            .await
            .map_err(err)?;
        let mut tick = tokio::time::interval((self.opts.ttl / 3).max(Duration::from_millis(300)));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    keeper.keep_alive().await.map_err(err)?;
                }
                r = alive.message() => match r.map_err(err)? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => {
                        *lease = None;
                        return Err(ApiError::new(ErrorKind::Internal, "lease expired; claiming again"));
                    }
                },
                w = watch.message() => {
                    match w.map_err(err)? {
                        Some(resp) if resp.canceled() => {
                            return Err(ApiError::new(ErrorKind::Internal, "watch canceled"));
                        }
                        Some(_) => {
                            let (_, hosts) = self.snapshot(&mut c, zone).await?;
                            incomplete = !self.sync(zone, record, index, hosts, shared).await;
                        }
                        None => return Err(ApiError::new(ErrorKind::Internal, "watch closed")),
                    }
                    if incomplete {
                        resync.as_mut().reset(tokio::time::Instant::now() + RESYNC);
                    }
                }
                () = &mut resync, if incomplete => {
                    let (_, hosts) = self.snapshot(&mut c, zone).await?;
                    incomplete = !self.sync(zone, record, index, hosts, shared).await;
                    if incomplete {
                        resync.as_mut().reset(tokio::time::Instant::now() + RESYNC);
                    }
                }
            }
        }
    }

    /// The zone's host records now, with the revision they were read at.
    async fn snapshot(
        &self,
        c: &mut Client,
        zone: &ZoneName,
    ) -> Result<(i64, BTreeMap<String, HostRecord>), ApiError> {
        let prefix = keys::hosts_prefix(zone);
        let resp = c
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| unreachable(&self.opts.endpoints, e))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut hosts = BTreeMap::new();
        for kv in resp.kvs() {
            let Some(node) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            match serde_json::from_slice::<HostRecord>(kv.value()) {
                Ok(h) => {
                    hosts.insert(node.to_owned(), h);
                }
                Err(e) => warn!(%zone, node, error = %e, "ignoring a bad host record in etcd"),
            }
        }
        Ok((revision, hosts))
    }

    /// Programs the data path for `hosts`: removes the peers that went, adds the new ones.
    /// A failed entry is logged and retried at the next sync; returns whether every entry is
    /// as `hosts` ask (if not, the zone's task syncs again within [`RESYNC`]).
    async fn sync(
        &self,
        zone: &ZoneName,
        record: &ZoneRecord,
        index: u32,
        hosts: BTreeMap<String, HostRecord>,
        shared: &Mutex<Shared>,
    ) -> bool {
        let desired = keys::plan_peers(record, &self.opts.node, &hosts);
        let current = lock(shared).peers.clone();
        let (gone, new) = keys::diff_peers(&current, &desired);
        let mut now = current;
        for p in gone {
            match self.vtep.del_peer(index, &p).await {
                Ok(()) => {
                    info!(%zone, slice = %p.slice, underlay = %p.underlay, "removed a host's entries");
                    now.remove(&p);
                }
                Err(e) => {
                    warn!(%zone, slice = %p.slice, error = %e, "removing a host's entries failed")
                }
            }
        }
        for p in new {
            match self.vtep.add_peer(index, &p).await {
                Ok(()) => {
                    info!(%zone, slice = %p.slice, underlay = %p.underlay, "added a host's entries");
                    now.insert(p);
                }
                Err(e) => {
                    warn!(%zone, slice = %p.slice, error = %e, "adding a host's entries failed")
                }
            }
        }
        {
            let mut s = lock(shared);
            s.peers = now.clone();
            s.hosts = hosts;
        }
        let complete = now == desired;
        self.save_peers(zone, &now);
        self.refresh_filter().await;
        complete
    }

    /// With `--underlay-filter`: makes the filter table accept VXLAN from exactly the hosts
    /// programmed as peers of our zones (the table goes with the last zone). The peers, not
    /// the last snapshot, so a restart while etcd is away keeps accepting the same hosts.
    async fn refresh_filter(&self) {
        if !self.opts.underlay_filter {
            return;
        }
        let (any, hosts) = {
            let zones = lock(&self.zones);
            let hosts: BTreeSet<Ipv4Addr> = zones
                .values()
                .flat_map(|r| {
                    lock(&r.shared)
                        .peers
                        .iter()
                        .map(|p| p.underlay)
                        .collect::<Vec<_>>()
                })
                .collect();
            (!zones.is_empty(), hosts)
        };
        let mut applied = self.filtered.lock().await;
        if !any {
            if let Err(e) = filter::remove().await {
                warn!(error = %e, "removing the underlay filter failed");
            }
            *applied = None;
            return;
        }
        if applied.as_ref() == Some(&hosts) {
            return;
        }
        match filter::apply(&hosts).await {
            Ok(()) => {
                info!(hosts = ?hosts, "underlay filter: VXLAN accepted from these hosts only");
                *applied = Some(hosts);
            }
            Err(e) => warn!(error = %e, "writing the underlay filter failed"),
        }
    }

    fn peers_file(&self, zone: &ZoneName) -> PathBuf {
        self.opts.dir.join(format!("{zone}.json"))
    }

    /// The peers programmed before a restart (the kernel still has them).
    fn load_peers(&self, zone: &ZoneName) -> BTreeSet<Peer> {
        let Ok(text) = std::fs::read(self.peers_file(zone)) else {
            return BTreeSet::new();
        };
        serde_json::from_slice::<Vec<SavedPeer>>(&text)
            .map(|v| v.into_iter().map(Peer::from).collect())
            .unwrap_or_default()
    }

    fn save_peers(&self, zone: &ZoneName, peers: &BTreeSet<Peer>) {
        let saved: Vec<SavedPeer> = peers.iter().map(SavedPeer::from).collect();
        let Ok(text) = serde_json::to_vec(&saved) else {
            return;
        };
        let _ = std::fs::create_dir_all(&self.opts.dir);
        if let Err(e) = crate::api::fsutil::write_atomic(&self.peers_file(zone), &text) {
            warn!(%zone, error = %e, "saving the programmed peers failed");
        }
    }
}

/// A peer as saved in `RUNTIME_DIR/span/ZONE.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPeer {
    slice: Ipv4Network,
    underlay: Ipv4Addr,
    #[serde(flatten)]
    host: MacOnly,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MacOnly {
    mac: String,
}

impl From<&Peer> for SavedPeer {
    fn from(p: &Peer) -> Self {
        Self {
            slice: p.slice,
            underlay: p.underlay,
            host: MacOnly {
                mac: p.mac.to_string(),
            },
        }
    }
}

impl From<SavedPeer> for Peer {
    fn from(s: SavedPeer) -> Self {
        Peer {
            slice: s.slice,
            underlay: s.underlay,
            mac: s
                .host
                .mac
                .parse()
                .unwrap_or(crate::api::Mac([2, 0, 0, 0, 0, 0])),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects to etcd: the first endpoint (from the one after the last that answered) whose
/// member serves a linearizable read, i.e. is part of a quorum. One client per endpoint: the
/// crate's balanced channel keeps sending to a dead member instead of failing over.
async fn connect(endpoints: &[String]) -> Result<Client, ApiError> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let opts = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_require_leader(true);
    let start = NEXT.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = String::from("no endpoint");
    for i in 0..endpoints.len() {
        let n = (start + i) % endpoints.len();
        let ep = &endpoints[n];
        let attempt = async {
            let mut c = Client::connect([ep], Some(opts.clone())).await?;
            c.get(
                keys::ROOT,
                Some(GetOptions::new().with_keys_only().with_limit(1)),
            )
            .await?;
            Ok::<_, etcd_client::Error>(c)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT * 2, attempt).await {
            Ok(Ok(c)) => {
                NEXT.store(n, std::sync::atomic::Ordering::Relaxed);
                return Ok(c);
            }
            Ok(Err(e)) => last = format!("{ep}: {e}"),
            Err(_) => last = format!("{ep}: timed out"),
        }
        debug!(endpoint = %ep, error = %last, "etcd endpoint unusable");
    }
    NEXT.store(
        (start + 1) % endpoints.len().max(1),
        std::sync::atomic::Ordering::Relaxed,
    );
    Err(unreachable(
        endpoints,
        format!("no member answers with a quorum (last: {last})"),
    ))
}

/// The value the `n`th operation of a transaction (a `get`) returned, if its key exists.
fn nth_value(ops: &[TxnOpResponse], n: usize) -> Option<Vec<u8>> {
    match ops.get(n)? {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::vxlan::{FakeVtep, VtepCall};

    fn fabric() -> (Arc<Fabric<FakeVtep>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let f = Fabric::new(
            Options {
                endpoints: vec!["http://127.0.0.1:1".into()],
                node: "h1".into(),
                underlay: "198.51.100.11".parse().unwrap(),
                ttl: Duration::from_secs(3),
                dir: dir.path().to_path_buf(),
                underlay_filter: false,
            },
            FakeVtep::default(),
        );
        (f, dir)
    }

    fn host(node: &str, underlay: &str, slice: &str) -> (String, HostRecord) {
        let z = ZoneName::new("web").unwrap();
        (
            node.to_owned(),
            HostRecord {
                underlay: underlay.parse().unwrap(),
                vtep_mac: keys::vtep_mac(&z, node),
                slice: slice.parse().unwrap(),
            },
        )
    }

    #[tokio::test]
    async fn sync_programs_peers_from_snapshots_and_survives_a_restart() {
        let (f, _dir) = fabric();
        let z = ZoneName::new("web").unwrap();
        let record = ZoneRecord::new(&z, Some("10.77.0.0/16".parse().unwrap()), Some(7));
        let shared = Mutex::new(Shared::default());
        let hosts: BTreeMap<_, _> = [
            host("h1", "198.51.100.11", "10.77.0.0/24"),
            host("h2", "198.51.100.12", "10.77.1.0/24"),
            host("h3", "198.51.100.13", "10.77.2.0/24"),
        ]
        .into_iter()
        .collect();
        f.sync(&z, &record, 9, hosts.clone(), &shared).await;
        let calls = f.vtep.take();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(calls.iter().all(|c| matches!(c, VtepCall::AddPeer(9, _))));
        // The same snapshot again: nothing to do.
        f.sync(&z, &record, 9, hosts.clone(), &shared).await;
        assert!(f.vtep.take().is_empty());
        // h3's lease expired.
        let mut later = hosts.clone();
        later.remove("h3");
        f.sync(&z, &record, 9, later.clone(), &shared).await;
        let calls = f.vtep.take();
        assert!(
            matches!(&calls[..], [VtepCall::DelPeer(9, p)] if p.slice.to_string() == "10.77.2.0/24"),
            "{calls:?}"
        );
        // A restarted rnetd knows what it programmed (the kernel kept it): nothing is redone.
        assert_eq!(f.load_peers(&z), lock(&shared).peers);
        let restarted = Mutex::new(Shared {
            peers: f.load_peers(&z),
            hosts: BTreeMap::new(),
        });
        f.sync(&z, &record, 9, later, &restarted).await;
        assert!(f.vtep.take().is_empty());
    }

    #[tokio::test]
    async fn a_failed_entry_is_retried_at_the_next_sync() {
        let (f, _dir) = fabric();
        let z = ZoneName::new("web").unwrap();
        let record = ZoneRecord::new(&z, Some("10.77.0.0/16".parse().unwrap()), Some(7));
        let shared = Mutex::new(Shared::default());
        let hosts: BTreeMap<_, _> = [host("h2", "198.51.100.12", "10.77.1.0/24")]
            .into_iter()
            .collect();
        *f.vtep.fail_peer.lock().unwrap() = Some("10.77.1.0/24".parse().unwrap());
        f.sync(&z, &record, 9, hosts.clone(), &shared).await;
        assert!(lock(&shared).peers.is_empty());
        *f.vtep.fail_peer.lock().unwrap() = None;
        f.vtep.take();
        f.sync(&z, &record, 9, hosts, &shared).await;
        assert_eq!(f.vtep.take().len(), 1);
        assert_eq!(lock(&shared).peers.len(), 1);
    }

    #[tokio::test]
    async fn joining_without_etcd_is_one_clear_error() {
        let (f, _dir) = fabric();
        let z = ZoneName::new("web").unwrap();
        let err = f.join(&z, None, None, None, &[]).await.unwrap_err();
        assert!(
            err.message
                .starts_with("etcd (http://127.0.0.1:1) unreachable: "),
            "{}",
            err.message
        );
        assert!(!err.message.contains('\n'));
    }
}

//! `FakeNft`: a recording [`Nft`] that simulates one table in memory, for the daemon's flow tests
//! (the kernel behind a small trait, a recording fake for tests:
//! `docs/architecture.md#conventions`). Built with `cfg(test)` or the `testing` feature only.

use std::borrow::Cow;
use std::collections::VecDeque;

use nftables::expr::Expression;
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::types::NfFamily;

use crate::apply::{AsyncNft, Nft, summarize};
use crate::error::{Error, Result};
use crate::hostfw::XtInsert;
use crate::names::{BRIDGE_FAMILY, FAMILY, TABLE};

/// Program name the fake reports in errors.
const PROGRAM: &str = "fake nft";

/// A recording [`Nft`]: keeps every batch, and simulates our tables `inet rnet` and `bridge rnet`
/// (sets, maps with their elements, chains, rules) with nft's rules for element commands, so flows can be asserted on
/// both the batches sent and the resulting state.
///
/// Simulated like nft: batches are atomic; `add` of an existing identical element is a no-op;
/// `add` of a map key with a different value fails with `File exists`; `delete` of a missing
/// table or element fails with `No such file or directory`. Not simulated: interval overlaps,
/// type checks of elements.
#[derive(Debug, Default)]
pub struct FakeNft {
    /// Every batch passed to `apply`, in order, including refused ones.
    pub batches: Vec<Nftables<'static>>,
    /// Number of `list_table` calls.
    pub lists: usize,
    ruleset_lists: usize,
    /// Our tables that exist, by family.
    tables: Tables,
    refusals: VecDeque<String>,
    /// Number of rules inserted as iptables would ([`AsyncNft::insert_xt`]).
    pub xt_inserts: usize,
}

/// `inet rnet` and `bridge rnet`, each present or not, and the chains of other firewalls.
#[derive(Clone, Debug, Default)]
struct Tables {
    inet: Option<FakeTable>,
    bridge: Option<FakeTable>,
    foreign: Foreign,
}

/// Chains of other tables (other firewalls) and their rules, as `nft -j list ruleset` shows
/// them: only what [`crate::hostfw`] reads and writes (insert, add and delete of rules).
#[derive(Clone, Debug, Default)]
struct Foreign {
    /// `chain` objects of the listing.
    chains: Vec<serde_json::Value>,
    /// `rule` objects of the listing, grouped by chain in insertion order.
    rules: Vec<serde_json::Value>,
    /// The last handle given out.
    handle: u32,
}

impl Foreign {
    fn has_chain(&self, family: &str, table: &str, chain: &str) -> bool {
        self.chains
            .iter()
            .map(|c| &c["chain"])
            .any(|c| c["family"] == family && c["table"] == table && c["name"] == chain)
    }

    fn rule_of(r: &serde_json::Value, family: &str, table: &str, chain: &str) -> bool {
        r["family"] == family && r["table"] == table && r["chain"] == chain
    }

    /// Applies one rule command; `Err(stderr)` like nft's.
    fn step(&mut self, cmd: &NfCmd<'static>) -> Result<(), String> {
        let (NfCmd::Add(NfListObject::Rule(r))
        | NfCmd::Insert(NfListObject::Rule(r))
        | NfCmd::Delete(NfListObject::Rule(r))) = cmd
        else {
            return Err(format!(
                "Error: fake nft only simulates rules in other tables, not {cmd:?}"
            ));
        };
        let family = crate::apply::family_name(r.family);
        let (table, chain) = (r.table.as_ref(), r.chain.as_ref());
        if !self.has_chain(family, table, chain) {
            return Err(format!("{ENOENT}: chain {family} {table} {chain}"));
        }
        let at_chain = |rules: &[serde_json::Value]| {
            rules
                .iter()
                .position(|x| Self::rule_of(&x["rule"], family, table, chain))
        };
        if let NfCmd::Delete(_) = cmd {
            let at = self
                .rules
                .iter()
                .position(|x| {
                    Self::rule_of(&x["rule"], family, table, chain)
                        && x["rule"]["handle"].as_u64() == r.handle.map(u64::from)
                })
                .ok_or_else(|| format!("{ENOENT}: rule handle {:?}", r.handle))?;
            self.rules.remove(at);
            return Ok(());
        }
        self.handle += 1;
        let mut rule = serde_json::json!({
            "family": family, "table": table, "chain": chain, "handle": self.handle,
            "expr": serde_json::to_value(&r.expr).expect("statements serialize"),
        });
        if let Some(comment) = &r.comment {
            rule["comment"] = serde_json::Value::from(comment.as_ref());
        }
        let rule = serde_json::json!({ "rule": rule });
        let at = match cmd {
            NfCmd::Insert(_) => at_chain(&self.rules).unwrap_or(self.rules.len()),
            _ => self
                .rules
                .iter()
                .rposition(|x| Self::rule_of(&x["rule"], family, table, chain))
                .map_or(self.rules.len(), |i| i + 1),
        };
        self.rules.insert(at, rule);
        Ok(())
    }
}

impl Tables {
    fn slot(&mut self, family: NfFamily) -> Option<&mut Option<FakeTable>> {
        match family {
            FAMILY => Some(&mut self.inet),
            BRIDGE_FAMILY => Some(&mut self.bridge),
            _ => None,
        }
    }

    /// The existing tables with their family, in listing order.
    fn existing(&self) -> impl Iterator<Item = (NfFamily, &FakeTable)> {
        [(FAMILY, &self.inet), (BRIDGE_FAMILY, &self.bridge)]
            .into_iter()
            .filter_map(|(f, t)| t.as_ref().map(|t| (f, t)))
    }
}

#[derive(Clone, Debug, Default)]
struct FakeTable {
    /// Set and map definitions (without elements) and their elements, in creation order.
    sets: Vec<(NfListObject<'static>, Vec<Expression<'static>>)>,
    chains: Vec<Chain<'static>>,
    rules: Vec<Rule<'static>>,
}

impl FakeNft {
    /// No table yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What [`AsyncNft::insert_xt`] does here: applies the rule's native form (the fake has no
    /// iptables) and counts it in [`FakeNft::xt_inserts`].
    pub fn apply_xt(&mut self, rule: &XtInsert) -> Result<()> {
        self.xt_inserts += 1;
        self.run(&rule.native)
    }

    /// True while table `inet rnet` exists.
    pub fn table_exists(&self) -> bool {
        self.tables.inet.is_some()
    }

    /// True while table `bridge rnet` exists.
    pub fn bridge_table_exists(&self) -> bool {
        self.tables.bridge.is_some()
    }

    /// Simulates `nft flush ruleset` by someone else: the tables are gone, ours and others'.
    pub fn flush_ruleset(&mut self) {
        let handle = self.tables.foreign.handle;
        self.tables = Tables::default();
        self.tables.foreign.handle = handle;
    }

    /// Simulates another firewall creating a chain in its table (`family` `ip`, `ip6` or
    /// `inet`): a base chain when `hook` is given (type filter, priority 0, `policy`).
    pub fn add_foreign_chain(
        &mut self,
        family: &str,
        table: &str,
        name: &str,
        hook: Option<&str>,
        policy: &str,
    ) {
        let mut chain = serde_json::json!({"family": family, "table": table, "name": name});
        if let Some(hook) = hook {
            chain["type"] = "filter".into();
            chain["hook"] = hook.into();
            chain["prio"] = 0.into();
            chain["policy"] = policy.into();
        }
        self.tables
            .foreign
            .chains
            .push(serde_json::json!({ "chain": chain }));
    }

    /// Simulates another firewall appending a rule (statements as `nft -j` prints them) to one
    /// of its chains.
    pub fn add_foreign_rule(
        &mut self,
        family: &str,
        table: &str,
        chain: &str,
        expr: serde_json::Value,
    ) {
        let foreign = &mut self.tables.foreign;
        foreign.handle += 1;
        foreign.rules.push(serde_json::json!({"rule": {
            "family": family, "table": table, "chain": chain, "handle": foreign.handle,
            "expr": expr,
        }}));
    }

    /// The comments of the rules of a foreign chain, in order (`""` for a rule without one).
    pub fn foreign_comments(&self, family: &str, table: &str, chain: &str) -> Vec<String> {
        self.tables
            .foreign
            .rules
            .iter()
            .filter(|r| Foreign::rule_of(&r["rule"], family, table, chain))
            .map(|r| r["rule"]["comment"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Simulates another firewall flushing one of its chains.
    pub fn flush_foreign_chain(&mut self, family: &str, table: &str, chain: &str) {
        self.tables
            .foreign
            .rules
            .retain(|r| !Foreign::rule_of(&r["rule"], family, table, chain));
    }

    /// Number of `list_ruleset` calls.
    pub fn ruleset_lists(&self) -> usize {
        self.ruleset_lists
    }

    /// Number of `list_table` calls (of our tables).
    pub fn table_lists(&self) -> usize {
        self.lists
    }

    /// Simulates `nft delete table bridge rnet` by someone else.
    pub fn delete_bridge_table(&mut self) {
        self.tables.bridge = None;
    }

    /// Makes the next `apply` fail with this stderr, without changing anything.
    pub fn refuse_next(&mut self, stderr: impl Into<String>) {
        self.refusals.push_back(stderr.into());
    }

    /// The elements of a set or map of either table (`[key, value]` lists for maps); empty if it
    /// does not exist.
    pub fn elements(&self, set: &str) -> Vec<Expression<'static>> {
        self.tables
            .existing()
            .find_map(|(_, t)| t.sets.iter().find(|(def, _)| set_name(def) == set))
            .map(|(_, elems)| elems.clone())
            .unwrap_or_default()
    }

    /// Number of rules in both tables (0 without tables).
    pub fn rule_count(&self) -> usize {
        self.tables.existing().map(|(_, t)| t.rules.len()).sum()
    }

    fn refused(batch: &Nftables<'_>, stderr: String) -> Error {
        Error::Refused {
            program: PROGRAM.to_owned(),
            step: format!("applying {}", summarize(batch)),
            stderr,
        }
    }

    fn run(&mut self, batch: &Nftables<'_>) -> Result<()> {
        let owned = owned_copy(batch);
        self.batches.push(owned.clone());
        if let Some(stderr) = self.refusals.pop_front() {
            return Err(Self::refused(batch, stderr));
        }
        let mut tables = self.tables.clone();
        for object in owned.objects.iter() {
            step(&mut tables, object).map_err(|stderr| Self::refused(batch, stderr))?;
        }
        self.tables = tables;
        Ok(())
    }

    fn listing(&mut self) -> Option<Nftables<'static>> {
        self.lists += 1;
        let mut objects = Vec::new();
        for (family, table) in self.tables.existing() {
            objects.extend(table_listing(family, table));
        }
        (!objects.is_empty()).then(|| Nftables {
            objects: Cow::Owned(objects),
        })
    }

    /// What `nft -j list ruleset` prints: our tables, then the other firewalls' chains and rules.
    fn ruleset(&mut self) -> serde_json::Value {
        self.ruleset_lists += 1;
        self.ruleset_now()
    }

    /// The ruleset's generation: a hash of everything `list ruleset` would print, so that it
    /// changes with every change, ours or another firewall's (the kernel counts instead).
    pub fn generation(&self) -> u32 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.ruleset_now().to_string().hash(&mut hasher);
        hasher.finish() as u32
    }

    fn ruleset_now(&self) -> serde_json::Value {
        let mut objects = vec![serde_json::json!({"metainfo": {"json_schema_version": 1}})];
        for (family, table) in self.tables.existing() {
            for object in table_listing(family, table) {
                objects.push(serde_json::to_value(object).expect("listings serialize"));
            }
        }
        objects.extend(self.tables.foreign.chains.iter().cloned());
        objects.extend(self.tables.foreign.rules.iter().cloned());
        serde_json::json!({ "nftables": objects })
    }
}

/// What `nft -j list table` prints for one table (without metainfo).
fn table_listing(family: NfFamily, table: &FakeTable) -> Vec<NfObject<'static>> {
    let mut objects = vec![NfObject::ListObject(NfListObject::Table(our_table(family)))];
    for (def, elems) in &table.sets {
        let mut def = def.clone();
        let elem = (!elems.is_empty()).then(|| Cow::Owned(elems.clone()));
        match &mut def {
            NfListObject::Set(s) => s.elem = elem,
            NfListObject::Map(m) => m.elem = elem,
            _ => {}
        }
        objects.push(NfObject::ListObject(def));
    }
    for chain in &table.chains {
        objects.push(NfObject::ListObject(NfListObject::Chain(chain.clone())));
    }
    for rule in &table.rules {
        objects.push(NfObject::ListObject(NfListObject::Rule(rule.clone())));
    }
    objects
}

impl Nft for FakeNft {
    fn apply(&mut self, batch: &Nftables<'_>) -> Result<()> {
        self.run(batch)
    }

    fn list_table(&mut self) -> Result<Option<Nftables<'static>>> {
        Ok(self.listing())
    }

    fn list_ruleset(&mut self) -> Result<serde_json::Value> {
        Ok(self.ruleset())
    }
}

impl AsyncNft for FakeNft {
    async fn apply_async(&mut self, batch: &Nftables<'_>) -> Result<()> {
        self.run(batch)
    }

    async fn list_table_async(&mut self) -> Result<Option<Nftables<'static>>> {
        Ok(self.listing())
    }

    async fn list_ruleset_async(&mut self) -> Result<serde_json::Value> {
        Ok(self.ruleset())
    }

    fn generation(&mut self) -> Option<u32> {
        Some(FakeNft::generation(self))
    }

    async fn insert_xt(&mut self, rule: &XtInsert) -> Result<()> {
        self.apply_xt(rule)
    }
}

fn our_table(family: NfFamily) -> Table<'static> {
    Table {
        family,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

/// A `'static` copy of a batch (the crate has no `into_owned`).
fn owned_copy(batch: &Nftables<'_>) -> Nftables<'static> {
    let value = serde_json::to_value(batch).expect("nftables batches serialize");
    serde_json::from_value(value).expect("a serialized batch reads back")
}

fn set_name<'a>(def: &'a NfListObject<'_>) -> &'a str {
    match def {
        NfListObject::Set(s) => &s.name,
        NfListObject::Map(m) => &m.name,
        _ => "",
    }
}

/// The key of an element: the element itself in a set, the first half of `[key, value]` in a map.
fn key<'e>(elem: &'e Expression<'static>) -> &'e Expression<'static> {
    match elem {
        Expression::List(kv) if kv.len() == 2 => &kv[0],
        other => other,
    }
}

const ENOENT: &str = "Error: Could not process rule: No such file or directory";
const EEXIST: &str = "Error: Could not process rule: File exists";

/// The family and table name an object belongs to.
fn owner<'o>(obj: &'o NfListObject<'_>) -> Option<(NfFamily, &'o str)> {
    match obj {
        NfListObject::Table(t) => Some((t.family, &t.name)),
        NfListObject::Set(s) => Some((s.family, &s.table)),
        NfListObject::Map(m) => Some((m.family, &m.table)),
        NfListObject::Chain(c) => Some((c.family, &c.table)),
        NfListObject::Rule(r) => Some((r.family, &r.table)),
        NfListObject::Element(e) => Some((e.family, &e.table)),
        _ => None,
    }
}

/// Applies one command to the simulated tables; `Err(stderr)` like nft's on failure.
fn step(tables: &mut Tables, object: &NfObject<'static>) -> Result<(), String> {
    let NfObject::CmdObject(cmd) = object else {
        return Err("Error: fake nft only takes commands".to_owned());
    };
    let obj = match cmd {
        NfCmd::Add(obj) | NfCmd::Delete(obj) | NfCmd::Insert(obj) => obj,
        other => return Err(format!("Error: fake nft does not simulate {other:?}")),
    };
    if let Some((family, name)) = owner(obj)
        && !(name == TABLE && matches!(family, FAMILY | BRIDGE_FAMILY))
    {
        return tables.foreign.step(cmd);
    }
    let table = match owner(obj) {
        Some((family, name)) if name == TABLE => tables.slot(family),
        _ => None,
    }
    .ok_or_else(|| format!("Error: fake nft only simulates tables inet and bridge {TABLE}"))?;
    match cmd {
        NfCmd::Add(NfListObject::Table(_)) => {
            table.get_or_insert_with(FakeTable::default);
            Ok(())
        }
        NfCmd::Delete(NfListObject::Table(_)) => {
            table.take().map(|_| ()).ok_or_else(|| ENOENT.to_owned())
        }
        NfCmd::Add(obj) => {
            let t = table.as_mut().ok_or_else(|| ENOENT.to_owned())?;
            add(t, obj)
        }
        NfCmd::Delete(NfListObject::Element(e)) => {
            let t = table.as_mut().ok_or_else(|| ENOENT.to_owned())?;
            let (_, elems) = t
                .sets
                .iter_mut()
                .find(|(def, _)| set_name(def) == e.name)
                .ok_or_else(|| ENOENT.to_owned())?;
            for gone in e.elem.iter() {
                let at = elems
                    .iter()
                    .position(|have| key(have) == key(gone))
                    .ok_or_else(|| format!("{ENOENT}: element of {}", e.name))?;
                elems.remove(at);
            }
            Ok(())
        }
        other => Err(format!("Error: fake nft does not simulate {other:?}")),
    }
}

fn add(t: &mut FakeTable, obj: &NfListObject<'static>) -> Result<(), String> {
    match obj {
        NfListObject::Set(_) | NfListObject::Map(_) => {
            let (mut def, elems) = (obj.clone(), element_list(obj));
            match &mut def {
                NfListObject::Set(s) => s.elem = None,
                NfListObject::Map(m) => m.elem = None,
                _ => {}
            }
            let name = set_name(&def).to_owned();
            let at = match t.sets.iter().position(|(d, _)| set_name(d) == name) {
                Some(at) if t.sets[at].0 == def => at,
                Some(_) => return Err(format!("{EEXIST}: set {name} with another definition")),
                None => {
                    t.sets.push((def, Vec::new()));
                    t.sets.len() - 1
                }
            };
            insert(&mut t.sets[at].1, &name, &elems)
        }
        NfListObject::Chain(c) => {
            if !t.chains.iter().any(|have| have.name == c.name) {
                t.chains.push(c.clone());
            }
            Ok(())
        }
        NfListObject::Rule(r) => {
            if !t.chains.iter().any(|c| c.name == r.chain) {
                return Err(format!("{ENOENT}: chain {}", r.chain));
            }
            // Keep rules grouped by chain, in chain order, as `nft list` shows them.
            let chain_index = |name: &str| t.chains.iter().position(|c| c.name == name);
            let mine = chain_index(&r.chain);
            let at = t
                .rules
                .iter()
                .rposition(|have| chain_index(&have.chain) <= mine)
                .map_or(0, |i| i + 1);
            t.rules.insert(at, r.clone());
            Ok(())
        }
        NfListObject::Element(e) => {
            let (_, elems) = t
                .sets
                .iter_mut()
                .find(|(def, _)| set_name(def) == e.name)
                .ok_or_else(|| format!("{ENOENT}: set {}", e.name))?;
            insert(elems, &e.name, &e.elem)
        }
        other => Err(format!("Error: fake nft does not simulate add {other:?}")),
    }
}

fn element_list(obj: &NfListObject<'static>) -> Vec<Expression<'static>> {
    let elem = match obj {
        NfListObject::Set(s) => s.elem.as_ref(),
        NfListObject::Map(m) => m.elem.as_ref(),
        _ => None,
    };
    elem.map(|e| e.to_vec()).unwrap_or_default()
}

fn insert(
    elems: &mut Vec<Expression<'static>>,
    set: &str,
    new: &[Expression<'static>],
) -> Result<(), String> {
    for elem in new {
        match elems.iter().find(|have| key(have) == key(elem)) {
            Some(have) if have == elem => {}
            Some(_) => return Err(format!("{EEXIST}: key of {set} holds another value")),
            None => elems.push(elem.clone()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::model::strategies::arb_change;
    use crate::model::{Change, IfName, PortMapping, PortRange, Proto, Ruleset};
    use crate::{observe, plan, render_change, render_changes, render_table, rule_count};

    fn port(addr: &str) -> PortMapping {
        let addr: IpAddr = addr.parse().unwrap();
        PortMapping::new(Proto::Tcp, None, PortRange::single(8080).unwrap(), addr, 80).unwrap()
    }

    fn attach(n: u8) -> Vec<Change> {
        vec![
            Change::AddSubnet(format!("10.0.{n}.0/28").parse().unwrap()),
            Change::AddIface(IfName::new(format!("ve-c{n}")).unwrap()),
        ]
    }

    #[test]
    fn a_daemon_flow_against_the_fake() {
        let mut nft = FakeNft::new();
        // Start: no table, so plan creates it.
        assert!(nft.list_table().unwrap().is_none());
        let mut desired = Ruleset::new();
        nft.apply(&plan(None, &desired).unwrap()).unwrap();
        assert!(nft.table_exists());
        assert_eq!(nft.rule_count(), rule_count());

        // Attach three containers, one batch each.
        for n in 0..3 {
            let changes = attach(n);
            nft.apply(&render_changes(&changes)).unwrap();
            changes.iter().for_each(|c| {
                desired.apply(c);
            });
        }
        assert_eq!(nft.rule_count(), rule_count());
        assert_eq!(nft.elements("ifaces").len(), 3);
        let observed = observe(&nft.list_table().unwrap().unwrap()).unwrap();
        assert!(observed.intact);
        assert_eq!(observed.ruleset, desired);
        assert!(plan(Some(&observed), &desired).is_none());

        // Someone flushes the ruleset: the next reconcile re-creates everything at once.
        nft.flush_ruleset();
        assert!(nft.list_table().unwrap().is_none());
        nft.apply(&plan(None, &desired).unwrap()).unwrap();
        let observed = observe(&nft.list_table().unwrap().unwrap()).unwrap();
        assert_eq!(observed.ruleset, desired);
        assert_eq!(nft.lists, 4);
        assert_eq!(nft.batches.len(), 5);
    }

    #[test]
    fn a_missing_bridge_table_is_rebuilt_with_its_ports() {
        let port = crate::GuardedPort {
            ifname: IfName::new("vb-a").unwrap(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            addr: Some("10.1.0.2".parse().unwrap()),
        };
        let desired = Ruleset::new().with(Change::GuardPort(port));
        let mut nft = FakeNft::new();
        nft.apply(&render_table(&desired)).unwrap();
        assert!(nft.table_exists() && nft.bridge_table_exists());
        assert_eq!(nft.elements("port_addrs").len(), 1);
        let observed = observe(&nft.list_table().unwrap().unwrap()).unwrap();
        assert!(observed.intact);
        assert_eq!(observed.ruleset, desired);

        nft.delete_bridge_table();
        let observed = observe(&nft.list_table().unwrap().unwrap()).unwrap();
        assert!(!observed.intact);
        nft.apply(&plan(Some(&observed), &desired).unwrap())
            .unwrap();
        assert!(nft.bridge_table_exists());
        assert_eq!(nft.elements("port_macs").len(), 1);
        assert_eq!(nft.rule_count(), rule_count());
    }

    #[test]
    fn refusals_are_atomic_and_name_the_batch() {
        let mut nft = FakeNft::new();
        nft.apply(&render_table(
            &Ruleset::new().with(Change::AddPort(port("10.0.0.2"))),
        ))
        .unwrap();
        let before = nft.list_table().unwrap();

        // Deleting another container's port: the `add` of our value fails, nothing changes.
        let err = nft
            .apply(&render_change(&Change::DelPort(port("10.0.0.3"))))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "fake nft refused applying add element ports4_addr x1, delete element ports4_addr x1, \
             add element ports4_port x1, delete element ports4_port x1: \
             Error: Could not process rule: File exists: key of ports4_addr holds another value"
        );
        assert_eq!(nft.list_table().unwrap(), before);

        // Deleting what is not there is fine; scripted refusals come back verbatim.
        nft.apply(&render_change(&Change::DelIface(
            IfName::new("ve-x").unwrap(),
        )))
        .unwrap();
        nft.refuse_next("Error: something");
        let err = nft.apply(&render_changes(&attach(1))).unwrap_err();
        assert!(err.to_string().ends_with(": Error: something"), "{err}");
        assert_eq!(nft.list_table().unwrap(), before);
        assert_eq!(nft.batches.len(), 4);
    }

    proptest! {
        /// Element batches applied one change at a time leave the same elements as rendering
        /// the whole table from the model (ports compared one by one, as the kernel holds them).
        #[test]
        fn incremental_equals_whole(changes in prop::collection::vec(arb_change(), 0..30)) {
            let mut nft = FakeNft::new();
            nft.apply(&render_table(&Ruleset::new())).unwrap();
            let mut model = Ruleset::new();
            for change in &changes {
                if nft.apply(&render_change(change)).is_err() {
                    continue; // refused by "nft": the model does not record it either
                }
                match change {
                    Change::AddPort(m) => m.split().for_each(|s| {
                        model.apply(&Change::AddPort(s));
                    }),
                    Change::DelPort(m) => m.split().for_each(|s| {
                        model.apply(&Change::DelPort(s));
                    }),
                    other => {
                        model.apply(other);
                    }
                }
            }
            let incremental = observe(&nft.list_table().unwrap().unwrap()).unwrap();
            prop_assert!(incremental.intact);
            prop_assert_eq!(&incremental.ruleset, &model);

            let mut whole = FakeNft::new();
            whole.apply(&render_table(&model)).unwrap();
            let whole = observe(&whole.list_table().unwrap().unwrap()).unwrap();
            prop_assert_eq!(whole, incremental);
        }
    }
}

//! Other firewalls on the host: finding the base chains of other tables that would drop our
//! traffic ([`detect`]), and the accept rules that let exactly our traffic through them
//! ([`plan_host`]).
//!
//! A packet must be accepted by every base chain on its hook: an `accept` in `inet rnet` does not
//! overrule Docker's `iptables -P FORWARD DROP` or a hardened host's `policy drop` input chain.
//! So rnet puts a few accept rules of its own at the head of each such chain (in `DOCKER-USER`
//! when the chain jumps there, as Docker documents): they match the netdev group every link of
//! ours is made in, so they are the same for one link or a thousand. Each carries a comment
//! starting with [`COMMENT_PREFIX`], which is how they are found again; nothing else in a
//! foreign table is ever touched.
//!
//! A chain iptables-nft manages must stay readable to iptables (or `iptables` refuses the whole
//! table, and Docker with it): iptables-nft 1.8.9 does not read a native `meta iifgroup` or a
//! `ct` match, but reads its own `-m devgroup`, an `xt` match only iptables can write. So rules
//! for tables iptables may manage are planned as iptables arguments ([`XtInsert`]), the others
//! as nft commands. The forward rules accept everything to and from our links and leave the
//! real decision to our own `forward` chain, which sees the same packets (isolation, no
//! unsolicited traffic in).
//!
//! Pure: the listing is `nft -j list table` of the foreign tables that matter, read as JSON
//! (foreign rulesets hold expressions the `nftables` crate cannot parse, e.g. iptables-nft's
//! `xt`), the output a batch. Which tables matter is read from `nft -j list chains`
//! ([`hooked_tables`]): only a table with a filter base chain on the forward or input hook can
//! drop our traffic, and a jump stays within its table. The tables that do not matter (CNI's
//! and Docker's `nat` tables, with chains and rules per container) are never listed, so a look
//! costs the same beside 10 or 10,000 foreign containers.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey};
use nftables::schema::{NfCmd, NfListObject, Nftables, Rule};
use nftables::stmt::Statement;
use nftables::types::NfFamily;
use serde_json::Value;

use crate::expr::{accept, eq, meta, number, payload};
use crate::names::{TABLE, UNDERLAY_TABLE};

/// A table, by family and name: `("ip", "filter")`.
pub type TableRef = (String, String);

/// Every comment of ours in a foreign chain starts with this.
pub const COMMENT_PREFIX: &str = "rnet: ";

/// The chain Docker documents for the admin's own forward rules, jumped to first from
/// `FORWARD` (and never flushed by Docker).
pub const DOCKER_USER: &str = "DOCKER-USER";

/// The hooks whose foreign chains can stop our traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// Forwarding: containers to the outside, published ports, replies.
    Forward,
    /// To the host: DHCP (udp 67) and DNS (udp/tcp 53) from our links to rnetd.
    Input,
}

/// A foreign chain that gets our accept rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignChain {
    /// Family of its table: `ip`, `ip6` or `inet`.
    pub family: String,
    /// Its table.
    pub table: String,
    /// The chain our rules go into: the base chain, or `DOCKER-USER` when the base chain jumps
    /// there.
    pub chain: String,
    /// The base chain on the hook (equal to `chain` unless it is `DOCKER-USER`).
    pub base: String,
    /// The hook.
    pub hook: Hook,
    /// Why: `policy drop`, or `drop rules` (a drop or reject in the chain or in one it jumps to).
    pub why: &'static str,
}

impl ForeignChain {
    /// `ip filter DOCKER-USER (forward: policy drop)`, for logs and `rnet status`.
    pub fn describe(&self) -> String {
        let hook = match self.hook {
            Hook::Forward => "forward",
            Hook::Input => "input",
        };
        format!(
            "{} {} {} ({hook}: {})",
            self.family, self.table, self.chain, self.why
        )
    }
}

/// A rule of ours found in a foreign chain (or, in [`HostView::read_comments`], any rule whose
/// comment was read through iptables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OurRule {
    /// Family of its table.
    pub family: String,
    /// Its table.
    pub table: String,
    /// Its chain.
    pub chain: String,
    /// Its handle (what a delete names).
    pub handle: u32,
    /// Its comment (starts with [`COMMENT_PREFIX`]).
    pub comment: String,
    /// The handle of its table when it was listed (a table made again gets a new one, and its
    /// rules handles from 1 again), if the listing showed it.
    pub table_handle: Option<u64>,
}

impl OurRule {
    /// The rule with `handle` in chain `key`, whose comment is `comment`.
    fn new(key: &ChainKey, handle: u32, comment: &str, table_handle: Option<u64>) -> Self {
        Self {
            family: key.0.clone(),
            table: key.1.clone(),
            chain: key.2.clone(),
            handle,
            comment: comment.to_owned(),
            table_handle,
        }
    }

    /// True if `r`, a rule of the listing whose table has handle `table_handle`, is this one.
    fn is(&self, key: &ChainKey, r: &Value, table_handle: Option<u64>) -> bool {
        self.family == key.0
            && self.table == key.1
            && self.chain == key.2
            && r["handle"].as_u64() == Some(u64::from(self.handle))
            && self.table_handle == table_handle
    }
}

/// The handles of the tables in a listing (`{"table": {"family", "name", "handle"}}`).
fn table_handles(objects: &[Value]) -> BTreeMap<(String, String), u64> {
    objects
        .iter()
        .filter_map(|o| o.get("table"))
        .filter_map(|t| {
            Some((
                (
                    t["family"].as_str()?.to_owned(),
                    t["name"].as_str()?.to_owned(),
                ),
                t["handle"].as_u64()?,
            ))
        })
        .collect()
}

/// What a ruleset listing says about the other firewalls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// Foreign chains that would drop our traffic, in listing order.
    pub chains: Vec<ForeignChain>,
    /// Our rules in foreign chains, in listing order.
    pub ours: Vec<OurRule>,
    /// Every rule whose comment only iptables shows (`-m comment`, an `xt` match) and was read
    /// from a save or from `known` (ours or not): the next look's `known`
    /// ([`detect_with_saves`], [`restored_tables`]).
    pub read_comments: Vec<OurRule>,
}

impl HostView {
    /// This view without the chains of the tables named in `tables` (any family), through
    /// which another mechanism lets our traffic (firewalld's own zones, see rnetd's
    /// `firewalld`): rules of ours still found there are then no longer needed, and
    /// [`plan_host`] removes them.
    pub fn without_tables(mut self, tables: &[&str]) -> Self {
        self.chains.retain(|c| !tables.contains(&c.table.as_str()));
        self
    }
}

/// One chain of the listing.
#[derive(Default)]
struct ListedChain {
    hook: Option<Hook>,
    policy_drop: bool,
    /// Rules other than ours: whether each drops, and the chains it jumps or goes to.
    drops: bool,
    jumps: Vec<String>,
}

type ChainKey = (String, String, String);

/// Reads `nft -j list ruleset` output: the foreign base chains on the forward and input hooks
/// (families `ip`, `ip6`, `inet`, type filter) that drop (policy drop, or a drop or reject in
/// the chain or in a chain it jumps or goes to), and the rules of ours in foreign chains.
/// Tables `inet rnet` and `bridge rnet` are ours and never foreign.
pub fn detect(listing: &Value) -> HostView {
    detect_with_saves(listing, &[], &[])
}

/// [`detect`], also recognising rules of ours that `iptables-save | iptables-restore` brought
/// back: iptables-restore turns our comment into an `xt` comment match, which `nft -j` does not
/// show. `saves` are `(family, text)`: the output of `iptables-save` (`ip`) and
/// `ip6tables-save` (`ip6`) taken with the listing, whose rules they list in the same order
/// ([`SavedComments`] matches them up, and only where they agree). Rules in `known` (the
/// last look's [`HostView::ours`]) are recognised by their table's and their own handle
/// without a save: those that iptables added for us carry `-m comment` from the start.
pub fn detect_with_saves(listing: &Value, saves: &[(&str, &str)], known: &[OurRule]) -> HostView {
    let mut chains: BTreeMap<ChainKey, ListedChain> = BTreeMap::new();
    let mut order: Vec<ChainKey> = Vec::new();
    let mut ours = Vec::new();
    let mut read_comments = Vec::new();
    let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
    let saved = SavedComments::new(&objects, saves);
    let handles = table_handles(&objects);
    let mut position: BTreeMap<ChainKey, usize> = BTreeMap::new();
    for object in &objects {
        if let Some(c) = object.get("chain") {
            let Some(key) = foreign_key(c, "name") else {
                continue;
            };
            let hook = guarded_hook(c["type"].as_str(), c["hook"].as_str());
            let entry = chains.entry(key.clone()).or_default();
            entry.hook = hook;
            entry.policy_drop = c["policy"].as_str() == Some("drop");
            order.push(key);
        } else if let Some(r) = object.get("rule") {
            let Some(key) = foreign_key(r, "chain") else {
                continue;
            };
            let index = position.entry(key.clone()).or_default();
            let at = *index;
            *index += 1;
            let table_handle = handles.get(&(key.0.clone(), key.1.clone())).copied();
            let comment = match r["comment"].as_str() {
                Some(c) => c,
                None => {
                    let read = saved.comment(&key, at).or_else(|| {
                        let known = known.iter().find(|k| k.is(&key, r, table_handle))?;
                        xt_comment(&r["expr"]).then_some(known.comment.as_str())
                    });
                    if let (Some(c), Some(handle)) = (read, rule_handle(r)) {
                        read_comments.push(OurRule::new(&key, handle, c, table_handle));
                    }
                    read.unwrap_or_default()
                }
            };
            if comment.starts_with(COMMENT_PREFIX) {
                if let Some(handle) = rule_handle(r) {
                    ours.push(OurRule::new(&key, handle, comment, table_handle));
                }
                continue;
            }
            let entry = chains.entry(key).or_default();
            entry.drops |= drops(&r["expr"]);
            jumps(&r["expr"], &mut entry.jumps);
        }
    }
    let mut found = Vec::new();
    for key in &order {
        let chain = &chains[key];
        let Some(hook) = chain.hook else { continue };
        let why = if chain.policy_drop {
            "policy drop"
        } else if reaches_drop(&chains, key, &mut BTreeSet::new()) {
            "drop rules"
        } else {
            continue;
        };
        let (family, table, base) = key.clone();
        let docker_user = (family.clone(), table.clone(), DOCKER_USER.to_owned());
        let target = if hook == Hook::Forward
            && chains.contains_key(&docker_user)
            && chain.jumps.iter().any(|j| j == DOCKER_USER)
        {
            DOCKER_USER.to_owned()
        } else {
            base.clone()
        };
        found.push(ForeignChain {
            family,
            table,
            chain: target,
            base,
            hook,
            why,
        });
    }
    HostView {
        chains: found,
        ours,
        read_comments,
    }
}

/// A rule's handle.
fn rule_handle(r: &Value) -> Option<u32> {
    r["handle"].as_u64().and_then(|h| u32::try_from(h).ok())
}

/// The tables of families `ip` and `ip6` whose chains hold a rule that may be one of ours
/// restored by `iptables-restore`: an accept with an `xt` comment match and no nft comment.
/// Only for these is `iptables-save -t TABLE`/`ip6tables-save -t TABLE` worth running
/// ([`detect_with_saves`]); not for a rule in `known` (found by an earlier look), so that the
/// rules iptables adds for us cost a save once, not at every look.
pub fn restored_tables(listing: &Value, known: &[OurRule]) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let objects = listing["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let handles = table_handles(objects);
    for object in objects {
        let Some(r) = object.get("rule") else {
            continue;
        };
        if let Some(key) = foreign_key(r, "chain") {
            let table_handle = handles.get(&(key.0.clone(), key.1.clone())).copied();
            if known.iter().any(|k| k.is(&key, r, table_handle)) {
                continue;
            }
        }
        let family = match r["family"].as_str() {
            Some("ip") => "ip",
            Some("ip6") => "ip6",
            _ => continue,
        };
        let Some(table) = r["table"].as_str() else {
            continue;
        };
        if r.get("comment").is_none()
            && xt_comment(&r["expr"])
            && r["expr"]
                .as_array()
                .is_some_and(|e| e.iter().any(|s| s.get("accept").is_some()))
            && !out.iter().any(|(f, t)| *f == family && t == table)
        {
            out.push((family, table.to_owned()));
        }
    }
    out
}

/// True if a rule's statements hold iptables' `-m comment` (an `xt` match `comment`).
fn xt_comment(expr: &Value) -> bool {
    expr.as_array().is_some_and(|items| {
        items
            .iter()
            .any(|s| s["xt"]["type"] == "match" && s["xt"]["name"] == "comment")
    })
}

/// The comments of `iptables-save` output matched up with the rules of the nft listing, chain
/// by chain: both list a chain's rules in the same order. A chain is used only where the two
/// agree (as many rules; a comment in the save exactly where the listing has a comment, nft's
/// own or an `xt` match; nft's own comments equal), so a change between the two listings, or a
/// table iptables cannot read, makes nothing recognised rather than something wrong.
struct SavedComments {
    chains: BTreeMap<ChainKey, Vec<Option<String>>>,
}

impl SavedComments {
    fn new(objects: &[Value], saves: &[(&str, &str)]) -> Self {
        let mut saved: BTreeMap<ChainKey, Vec<Option<String>>> = BTreeMap::new();
        for (family, text) in saves {
            for (table, chain, comment) in parse_save(text) {
                saved
                    .entry(((*family).to_owned(), table, chain))
                    .or_default()
                    .push(comment);
            }
        }
        if saved.is_empty() {
            return Self { chains: saved };
        }
        // What the listing says of each rule: its nft comment, or whether it has an xt one.
        let mut listed: BTreeMap<ChainKey, Vec<(Option<&str>, bool)>> = BTreeMap::new();
        for r in objects.iter().filter_map(|o| o.get("rule")) {
            if let Some(key) = foreign_key(r, "chain") {
                listed
                    .entry(key)
                    .or_default()
                    .push((r["comment"].as_str(), xt_comment(&r["expr"])));
            }
        }
        saved.retain(|key, comments| {
            listed.get(key).is_some_and(|rules| {
                rules.len() == comments.len()
                    && rules
                        .iter()
                        .zip(comments.iter())
                        .all(|((native, xt), saved)| match (native, saved) {
                            (Some(n), Some(s)) => n == s,
                            (None, Some(_)) => *xt,
                            (None, None) => !*xt,
                            (Some(_), None) => false,
                        })
            })
        });
        Self { chains: saved }
    }

    /// The saved comment of the `at`-th rule of chain `key`, if the chain's listings agree.
    fn comment(&self, key: &ChainKey, at: usize) -> Option<&str> {
        self.chains.get(key)?.get(at)?.as_deref()
    }
}

/// The rules of `iptables-save` output: `(table, chain, comment)` of each `-A` line, in order.
fn parse_save(text: &str) -> Vec<(String, String, Option<String>)> {
    let mut table = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.trim().to_owned());
            continue;
        }
        let Some(table) = &table else { continue };
        let words = split_words(line);
        let [append, chain, rest @ ..] = words.as_slice() else {
            continue;
        };
        if append != "-A" {
            continue;
        }
        let comment = rest
            .windows(2)
            .find(|w| w[0] == "--comment")
            .map(|w| w[1].clone());
        out.push((table.clone(), chain.clone(), comment));
    }
    out
}

/// The words of an `iptables-save` line: split at blanks, `"..."` quoting with `\` escapes (how
/// iptables-save writes a comment).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `(family, table, name)` of a listed chain or rule, unless it is ours or of a family whose
/// hooks our traffic does not cross.
fn foreign_key(object: &Value, name_field: &str) -> Option<ChainKey> {
    let family = object["family"].as_str()?;
    let table = object["table"].as_str()?;
    let name = object[name_field].as_str()?;
    if !is_foreign(family, table) {
        return None;
    }
    Some((family.to_owned(), table.to_owned(), name.to_owned()))
}

/// True for a table of another firewall whose chains can see our traffic: families `ip`,
/// `ip6`, `inet`, except our own `inet` tables.
fn is_foreign(family: &str, table: &str) -> bool {
    matches!(family, "ip" | "ip6" | "inet")
        && !(family == "inet" && (table == TABLE || table == UNDERLAY_TABLE))
}

/// The hook a chain of `type` on `hook` guards, if it can stop our traffic.
fn guarded_hook(kind: Option<&str>, hook: Option<&str>) -> Option<Hook> {
    match (kind, hook) {
        (Some("filter"), Some("forward")) => Some(Hook::Forward),
        (Some("filter"), Some("input")) => Some(Hook::Input),
        _ => None,
    }
}

/// One object of `nft -j list chains`: a chain, or something else (`metainfo`).
#[derive(serde::Deserialize)]
struct ChainsItem<'a> {
    #[serde(borrow, default)]
    chain: Option<ChainHead<'a>>,
}

/// What [`hooked_tables`] reads of a chain; nothing else is kept.
#[derive(serde::Deserialize)]
struct ChainHead<'a> {
    #[serde(borrow)]
    family: Cow<'a, str>,
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    hook: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ChainsListing<'a> {
    #[serde(borrow)]
    nftables: Vec<ChainsItem<'a>>,
}

/// The foreign tables that hold a base chain able to drop our traffic (type filter, hook forward
/// or input, families `ip`, `ip6`, `inet`), read from `nft -j list chains`: the only tables
/// [`detect`] needs listed. Read into a few typed fields: a host with thousands of foreign
/// chains costs one pass over the text, no tree of JSON values. In listing order (the kernel's:
/// the order the tables were made), each table once. A table whose name nft's command line could
/// not name (only nft's JSON input makes such names) is left out: listing it by name would run
/// another command.
pub fn hooked_tables(chains: &str) -> serde_json::Result<Vec<TableRef>> {
    let listing: ChainsListing<'_> = serde_json::from_str(chains)?;
    let mut out: Vec<TableRef> = Vec::new();
    for c in listing.nftables.into_iter().filter_map(|item| item.chain) {
        if is_foreign(&c.family, &c.table)
            && nameable(&c.table)
            && guarded_hook(c.kind.as_deref(), c.hook.as_deref()).is_some()
            && !out.iter().any(|(f, t)| *f == c.family && *t == c.table)
        {
            out.push((c.family.into_owned(), c.table.into_owned()));
        }
    }
    Ok(out)
}

/// True if `name` is an identifier of nft's command line: a letter or `_`, then letters, digits
/// and `_-./` (what iptables-nft, firewalld and Docker name their tables).
fn nameable(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
}

/// The objects of table `family name` in a listing of several tables (e.g. the whole ruleset),
/// as `nft -j list table` prints them; `None` if the listing has none of that table.
pub fn table_of(listing: &Value, family: &str, name: &str) -> Option<Value> {
    let objects: Vec<Value> = listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|object| {
            object.as_object().is_some_and(|map| {
                map.iter().any(|(kind, inner)| {
                    let table = if kind == "table" {
                        &inner["name"]
                    } else {
                        &inner["table"]
                    };
                    inner["family"] == family && table == name
                })
            })
        })
        .cloned()
        .collect();
    (!objects.is_empty()).then(|| serde_json::json!({ "nftables": objects }))
}

/// True if a rule's statements hold a `drop` or `reject` verdict anywhere (also in a verdict
/// map), or iptables-nft's `xt` target `REJECT`/`DROP`.
fn drops(expr: &Value) -> bool {
    match expr {
        Value::Array(items) => items.iter().any(drops),
        Value::Object(map) => map.iter().any(|(k, v)| {
            k == "drop"
                || k == "reject"
                || (k == "xt"
                    && v["type"] == "target"
                    && matches!(v["name"].as_str(), Some("REJECT" | "DROP")))
                || drops(v)
        }),
        _ => false,
    }
}

/// The chains a rule jumps or goes to (also from a verdict map).
fn jumps(expr: &Value, out: &mut Vec<String>) {
    match expr {
        Value::Array(items) => items.iter().for_each(|i| jumps(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                if (k == "jump" || k == "goto")
                    && let Some(target) = v["target"].as_str()
                {
                    out.push(target.to_owned());
                } else {
                    jumps(v, out);
                }
            }
        }
        _ => {}
    }
}

/// True if `key` or a chain of its table it jumps or goes to (transitively) has a drop rule.
fn reaches_drop(
    chains: &BTreeMap<ChainKey, ListedChain>,
    key: &ChainKey,
    seen: &mut BTreeSet<ChainKey>,
) -> bool {
    if !seen.insert(key.clone()) {
        return false;
    }
    let Some(chain) = chains.get(key) else {
        return false;
    };
    chain.drops
        || chain.jumps.iter().any(|target| {
            let next = (key.0.clone(), key.1.clone(), target.clone());
            reaches_drop(chains, &next, seen)
        })
}

/// One rule of ours: its comment, its statements, and the same rule as iptables arguments.
struct Spec {
    comment: String,
    expr: Vec<Statement<'static>>,
    /// The match and target as `iptables -I CHAIN` takes them (the comment not included).
    xt: Vec<String>,
}

/// The rules of ours in a chain on `hook` of a table of `family`, in the order they are listed:
/// the same few whatever the number of our links, which all are in netdev group `group`
/// (`ip link set dev ve-x group 0x726e6574`).
///
/// Forward: everything from our links and everything to them (our own `forward` chain, on the
/// same hook, decides what of it passes: replies, published ports, no unsolicited traffic in, no
/// traffic between links). Input: DHCP (udp 67) and DNS (udp and tcp 53) from our links, and in
/// an `ip6` or `inet` table ICMPv6 (router solicitations to rnetd, neighbour discovery of the
/// gateway, echo: without it a container cannot even resolve its IPv6 gateway's MAC address).
fn specs(hook: Hook, family: &str, group: u32) -> Vec<Spec> {
    let from = || eq(meta(MetaKey::Iifgroup), Expression::Number(group));
    let hex = format!("{group:#x}");
    let xt = |words: &[&str]| -> Vec<String> {
        words
            .iter()
            .map(|w| (*w).to_owned())
            .chain([hex.clone()])
            .collect()
    };
    match hook {
        Hook::Forward => vec![
            Spec {
                comment: format!("{COMMENT_PREFIX}from our links"),
                expr: vec![from(), accept()],
                xt: xt(&["-m", "devgroup", "--src-group"]),
            },
            Spec {
                comment: format!("{COMMENT_PREFIX}to our links"),
                expr: vec![
                    eq(meta(MetaKey::Oifgroup), Expression::Number(group)),
                    accept(),
                ],
                xt: xt(&["-m", "devgroup", "--dst-group"]),
            },
        ],
        Hook::Input => {
            let mut out: Vec<Spec> = [("DHCP", "udp", 67), ("DNS", "udp", 53), ("DNS", "tcp", 53)]
                .into_iter()
                .map(|(what, proto, port)| Spec {
                    comment: format!("{COMMENT_PREFIX}{what} {proto} from our links"),
                    expr: vec![from(), eq(payload(proto, "dport"), number(port)), accept()],
                    xt: xt(&[
                        "-p",
                        proto,
                        "--dport",
                        &port.to_string(),
                        "-m",
                        "devgroup",
                        "--src-group",
                    ]),
                })
                .collect();
            if family != "ip" {
                // `meta l4proto 58` is what `ip6tables -p ipv6-icmp` writes.
                out.push(Spec {
                    comment: format!("{COMMENT_PREFIX}ICMPv6 from our links"),
                    expr: vec![from(), eq(meta(MetaKey::L4proto), number(58)), accept()],
                    xt: xt(&["-p", "ipv6-icmp", "-m", "devgroup", "--src-group"]),
                });
            }
            out
        }
    }
}

/// True if iptables-nft may manage the table (`iptables -t TABLE`): its rules then go in with
/// `iptables` ([`XtInsert`]), so that iptables, and Docker with it, can still read the chain.
/// A native `meta iifgroup` in such a chain would make iptables refuse the whole table
/// ("Parsing nftables rule failed"); `-m devgroup` is the same match as an `xt` expression.
fn iptables_table(family: &str, table: &str) -> bool {
    matches!(family, "ip" | "ip6") && matches!(table, "filter" | "mangle" | "raw" | "security")
}

fn family(name: &str) -> NfFamily {
    match name {
        "ip" => NfFamily::IP,
        "ip6" => NfFamily::IP6,
        _ => NfFamily::INet,
    }
}

fn rule(
    family_name: &str,
    table: &str,
    chain: &str,
    expr: Vec<Statement<'static>>,
    handle: Option<u32>,
    comment: Option<String>,
) -> Rule<'static> {
    Rule {
        family: family(family_name),
        table: Cow::Owned(table.to_owned()),
        chain: Cow::Owned(chain.to_owned()),
        expr: Cow::Owned(expr),
        handle,
        index: None,
        comment: comment.map(Cow::Owned),
    }
}

/// A rule of ours to insert with `iptables`/`ip6tables` (iptables-nft) at the head of a chain of
/// a table iptables may manage.
#[derive(Clone, Debug, PartialEq)]
pub struct XtInsert {
    /// `ip` (iptables) or `ip6` (ip6tables).
    pub family: String,
    /// The table (`-t`).
    pub table: String,
    /// The chain (`-I CHAIN`).
    pub chain: String,
    /// The match, comment and target: `-m devgroup --src-group 0x726e6574 -m comment --comment
    /// "rnet: from our links" -j ACCEPT`.
    pub args: Vec<String>,
    /// The same rule as one nft `insert`, for when iptables cannot add it (not installed, the
    /// table already unreadable to it).
    pub native: Nftables<'static>,
}

/// What [`plan_host`] asks for, to be done in this order.
#[derive(Debug, Default, PartialEq)]
pub struct HostPlan {
    /// Deletes by handle, and inserts into tables iptables does not manage.
    pub batch: Option<Nftables<'static>>,
    /// Inserts into tables iptables may manage, each to run as given.
    pub iptables: Vec<XtInsert>,
}

/// The plan that makes our rules in foreign chains exactly those `view.chains` need while we
/// have links (all in netdev group `group`), or none for `None`; `None` if they already are.
/// Missing rules are inserted at the head of their chain, rules of ours that are no longer
/// needed (no links, chain no longer dropping, the per-link rules of earlier versions) or
/// duplicated are deleted by handle. A chain's rules do not depend on which links or how many:
/// adding the 1000th container changes nothing in a foreign table.
pub fn plan_host(view: &HostView, group: Option<u32>) -> Option<HostPlan> {
    let mut wanted: BTreeMap<ChainKey, Vec<Spec>> = BTreeMap::new();
    if let Some(group) = group {
        for c in &view.chains {
            let key = (c.family.clone(), c.table.clone(), c.chain.clone());
            let rules = wanted.entry(key).or_default();
            if rules.is_empty() {
                rules.extend(specs(c.hook, &c.family, group));
            }
        }
    }
    let mut batch = Batch::new();
    let mut kept: BTreeSet<(ChainKey, String)> = BTreeSet::new();
    let mut any = false;
    for r in &view.ours {
        let key = (r.family.clone(), r.table.clone(), r.chain.clone());
        let needed = wanted
            .get(&key)
            .is_some_and(|specs| specs.iter().any(|s| s.comment == r.comment));
        if needed && kept.insert((key, r.comment.clone())) {
            continue;
        }
        batch.add_cmd(NfCmd::Delete(NfListObject::Rule(rule(
            &r.family,
            &r.table,
            &r.chain,
            Vec::new(),
            Some(r.handle),
            None,
        ))));
        any = true;
    }
    let mut iptables = Vec::new();
    for (key, specs) in wanted {
        // Inserted last first, so they list in `specs` order at the head of the chain.
        for spec in specs.into_iter().rev() {
            if kept.contains(&(key.clone(), spec.comment.clone())) {
                continue;
            }
            let insert = NfCmd::Insert(NfListObject::Rule(rule(
                &key.0,
                &key.1,
                &key.2,
                spec.expr,
                None,
                Some(spec.comment.clone()),
            )));
            if iptables_table(&key.0, &key.1) {
                let mut args = spec.xt;
                args.extend(["-m", "comment", "--comment"].map(String::from));
                args.push(spec.comment);
                args.extend(["-j", "ACCEPT"].map(String::from));
                let mut native = Batch::new();
                native.add_cmd(insert);
                iptables.push(XtInsert {
                    family: key.0.clone(),
                    table: key.1.clone(),
                    chain: key.2.clone(),
                    args,
                    native: native.to_nftables(),
                });
            } else {
                batch.add_cmd(insert);
                any = true;
            }
        }
    }
    (any || !iptables.is_empty()).then(|| HostPlan {
        batch: any.then(|| batch.to_nftables()),
        iptables,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn recorded(name: &str) -> Value {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// rnetd's link group (`netd`'s `LINK_GROUP`).
    const GROUP: Option<u32> = Some(0x726e_6574);

    /// The nft commands of a plan: its batch's, then the native form of its iptables inserts
    /// (what they amount to in the ruleset).
    fn plan_commands(plan: &HostPlan) -> Vec<Value> {
        let mut out: Vec<Value> = plan.batch.iter().flat_map(commands).collect();
        out.extend(plan.iptables.iter().flat_map(|x| commands(&x.native)));
        out
    }

    /// Only the batch's commands, for plans that must not need iptables.
    fn batch_commands(plan: &HostPlan) -> Vec<Value> {
        assert!(plan.iptables.is_empty(), "{plan:?}");
        commands(plan.batch.as_ref().unwrap())
    }

    fn described(view: &HostView) -> Vec<String> {
        view.chains.iter().map(ForeignChain::describe).collect()
    }

    /// The commands of a batch, as JSON values.
    fn commands(batch: &Nftables<'_>) -> Vec<Value> {
        serde_json::to_value(batch).unwrap()["nftables"]
            .as_array()
            .unwrap()
            .clone()
    }

    #[test]
    fn docker_and_a_hardened_input_chain_are_detected() {
        // iptables-nft with Docker's layout (FORWARD policy DROP, jump DOCKER-USER, isolation
        // chain with a drop), ip6tables FORWARD DROP, an nft inet input chain with policy drop
        // and a reject, and a forward chain that only logs (not detected).
        let view = detect(&recorded("docker-like.json"));
        assert_eq!(
            described(&view),
            [
                "ip filter DOCKER-USER (forward: policy drop)",
                "ip6 filter FORWARD (forward: policy drop)",
                "inet fw input (input: policy drop)",
            ]
        );
        assert_eq!(view.chains[0].base, "FORWARD");
        assert!(view.ours.is_empty());
    }

    #[test]
    fn drop_rules_are_found_through_jumps_and_verdict_maps() {
        let listing = json!({"nftables": [
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_INPUT",
                       "type": "filter", "hook": "input", "prio": 10, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_INPUT_ZONES"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_IN_public"}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_INPUT", "handle": 3,
                      "expr": [{"jump": {"target": "filter_INPUT_ZONES"}}]}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_INPUT_ZONES",
                      "handle": 4, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}},
                      "data": {"set": [["eth0", {"goto": {"target": "filter_IN_public"}}]]}}}]}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_IN_public",
                      "handle": 5, "expr": [{"reject": {"type": "icmpx",
                      "expr": "admin-prohibited"}}]}},
            // A prerouting chain with drops and a nat chain on input: not ours to care about.
            {"chain": {"family": "inet", "table": "x", "name": "pre", "type": "filter",
                       "hook": "prerouting", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "x", "name": "in", "type": "nat",
                       "hook": "input", "prio": 100, "policy": "accept"}},
            // Our own table never counts, even with a drop in its forward chain.
            {"chain": {"family": "inet", "table": "rnet", "name": "forward", "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "rnet", "chain": "forward", "handle": 9,
                      "expr": [{"drop": null}]}},
            // iptables-nft's REJECT is an xt target.
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "type": "filter",
                       "hook": "input", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2,
                      "expr": [{"xt": {"type": "target", "name": "REJECT"}}]}},
        ]});
        assert_eq!(
            described(&detect(&listing)),
            [
                "inet firewalld filter_INPUT (input: drop rules)",
                "ip filter INPUT (input: drop rules)",
            ]
        );
    }

    #[test]
    fn a_chain_gets_the_same_few_rules_on_our_link_group_and_iptables_tables_get_them_from_iptables()
     {
        let view = detect(&recorded("docker-like.json"));
        let plan = plan_host(&view, GROUP).unwrap();
        // The inet input chain natively: DHCP, DNS udp and tcp, ICMPv6, inserted last first.
        let cmds = commands(plan.batch.as_ref().unwrap());
        assert_eq!(cmds.len(), 4);
        assert_eq!(
            cmds[0],
            json!({"insert": {"rule": {"family": "inet", "table": "fw", "chain": "input",
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifgroup"}},
                                    "right": 0x726e_6574}},
                         {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                                    "right": 58}},
                         {"accept": null}],
                "comment": "rnet: ICMPv6 from our links"}}})
        );
        assert_eq!(
            cmds[1],
            json!({"insert": {"rule": {"family": "inet", "table": "fw", "chain": "input",
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifgroup"}},
                                    "right": 0x726e_6574}},
                         {"match": {"op": "==", "left": {"payload": {"protocol": "tcp",
                                    "field": "dport"}}, "right": 53}},
                         {"accept": null}],
                "comment": "rnet: DNS tcp from our links"}}})
        );
        // Docker's DOCKER-USER and ip6tables' FORWARD through iptables, with `-m devgroup`.
        let xt: Vec<(String, String)> = plan
            .iptables
            .iter()
            .map(|x| {
                (
                    format!("{} {} {}", x.family, x.table, x.chain),
                    x.args.join(" "),
                )
            })
            .collect();
        let to =
            "-m devgroup --dst-group 0x726e6574 -m comment --comment rnet: to our links -j ACCEPT";
        let from = "-m devgroup --src-group 0x726e6574 -m comment --comment rnet: from our links -j ACCEPT";
        assert_eq!(
            xt,
            [
                ("ip filter DOCKER-USER", to),
                ("ip filter DOCKER-USER", from),
                ("ip6 filter FORWARD", to),
                ("ip6 filter FORWARD", from),
            ]
            .map(|(c, a)| (c.to_owned(), a.to_owned()))
        );
        // Each with its native form, for when iptables cannot add it.
        assert_eq!(
            commands(&plan.iptables[0].native),
            [
                json!({"insert": {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER",
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifgroup"}},
                                    "right": 0x726e_6574}}, {"accept": null}],
                "comment": "rnet: to our links"}}})
            ]
        );
    }

    #[test]
    fn input_rules_in_iptables_tables_carry_the_protocol_and_port() {
        let listing = json!({"nftables": [
            {"chain": {"family": "ip6", "table": "filter", "name": "INPUT", "type": "filter",
                       "hook": "input", "prio": 0, "policy": "drop"}},
        ]});
        let plan = plan_host(&detect(&listing), GROUP).unwrap();
        assert!(plan.batch.is_none());
        let args: Vec<String> = plan.iptables.iter().map(|x| x.args.join(" ")).collect();
        let tail = "-m devgroup --src-group 0x726e6574 -m comment --comment";
        assert_eq!(
            args,
            [
                format!("-p ipv6-icmp {tail} rnet: ICMPv6 from our links -j ACCEPT"),
                format!("-p tcp --dport 53 {tail} rnet: DNS tcp from our links -j ACCEPT"),
                format!("-p udp --dport 53 {tail} rnet: DNS udp from our links -j ACCEPT"),
                format!("-p udp --dport 67 {tail} rnet: DHCP udp from our links -j ACCEPT"),
            ]
        );
    }

    /// `view` after the plan `plan_host` gave was applied (handles from 100 on).
    fn applied(view: &HostView, plan: &HostPlan) -> HostView {
        let mut next = view.clone();
        let mut handle = 100;
        for cmd in plan_commands(plan) {
            if let Some(r) = cmd.get("insert").map(|i| &i["rule"]) {
                handle += 1;
                next.ours.push(OurRule {
                    family: r["family"].as_str().unwrap().to_owned(),
                    table: r["table"].as_str().unwrap().to_owned(),
                    chain: r["chain"].as_str().unwrap().to_owned(),
                    handle,
                    comment: r["comment"].as_str().unwrap().to_owned(),
                    table_handle: None,
                });
            } else {
                let h = cmd["delete"]["rule"]["handle"].as_u64().unwrap();
                next.ours.retain(|r| u64::from(r.handle) != h);
            }
        }
        next
    }

    #[test]
    fn planning_is_idempotent_and_removes_what_is_no_longer_needed() {
        let view = detect(&recorded("docker-like.json"));
        let after = applied(&view, &plan_host(&view, GROUP).unwrap());
        assert_eq!(after.ours.len(), 8);
        assert_eq!(plan_host(&after, GROUP), None, "nothing to do twice");

        // A duplicate (someone copied a rule of ours) is deleted, the original kept.
        let mut dup = after.clone();
        let mut copy = dup.ours[0].clone();
        copy.handle = 7;
        dup.ours.push(copy);
        let cmds = batch_commands(&plan_host(&dup, GROUP).unwrap());
        assert_eq!(
            cmds,
            [
                json!({"delete": {"rule": {"family": dup.ours[0].family, "table": dup.ours[0].table,
                "chain": dup.ours[0].chain, "expr": [], "handle": 7}}})
            ]
        );

        // No links: all 8 go.
        let none = applied(&after, &plan_host(&after, None).unwrap());
        assert!(none.ours.is_empty());
        // A chain that no longer drops loses ours too.
        let mut relaxed = after.clone();
        relaxed.chains.retain(|c| c.hook == Hook::Forward);
        let cmds = batch_commands(&plan_host(&relaxed, GROUP).unwrap());
        assert_eq!(cmds.len(), 4);
        assert!(cmds.iter().all(|c| c["delete"]["rule"]["table"] == "fw"));
    }

    #[test]
    fn the_per_link_rules_of_earlier_versions_give_way_to_the_group_rules() {
        let view = detect(&recorded("docker-like.json"));
        let mut old = view.clone();
        for (handle, comment) in [(41, "rnet: from ve-a"), (42, "rnet: to ve-a")] {
            old.ours.push(OurRule {
                family: "ip".to_owned(),
                table: "filter".to_owned(),
                chain: DOCKER_USER.to_owned(),
                handle,
                comment: comment.to_owned(),
                table_handle: None,
            });
        }
        let plan = plan_host(&old, GROUP).unwrap();
        let deleted: Vec<Value> = commands(plan.batch.as_ref().unwrap())
            .into_iter()
            .filter_map(|c| c.get("delete").map(|d| d["rule"]["handle"].clone()))
            .collect();
        assert_eq!(deleted, [json!(41), json!(42)]);
        let after = applied(&old, &plan);
        assert_eq!(after.ours.len(), 8);
        assert!(after.ours.iter().all(|r| r.comment.ends_with("our links")));
    }

    #[test]
    fn rules_of_ours_are_found_by_comment_only() {
        let listing = json!({"nftables": [
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 4,
                      "comment": "rnet: from ve-a", "expr": [{"accept": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 5,
                      "comment": "rnetd was here", "expr": [{"accept": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 6,
                      "expr": [{"accept": null}]}},
            {"rule": {"family": "inet", "table": "rnet", "chain": "forward", "handle": 7,
                      "comment": "rnet: not foreign", "expr": [{"accept": null}]}},
        ]});
        let view = detect(&listing);
        assert_eq!(view.ours.len(), 1);
        assert_eq!(view.ours[0].handle, 4);
        // Without a dropping chain, even with links, ours goes (and nothing else).
        let cmds = batch_commands(&plan_host(&view, GROUP).unwrap());
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0]["delete"]["rule"]["handle"], 4);
    }
    /// `iptables-save | iptables-restore` of a chain with two rules of ours and one of the
    /// admin's, as iptables-nft 1.8.9 and nft 1.0.6 list it: our comments became `xt` matches.
    fn restored_listing() -> Value {
        json!({"nftables": [
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 2,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 4,
                      "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                          "right": "ve-a"}},
                               {"xt": {"type": "match", "name": "comment"}},
                               {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 5,
                      "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                          "right": "ve-a"}},
                               {"xt": {"type": "match", "name": "comment"}},
                               {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 6,
                      "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                          "right": "eth9"}},
                               {"xt": {"type": "match", "name": "comment"}},
                               {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 7,
                      "comment": "rnet: from our links",
                      "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                          "right": "ve-a"}}, {"accept": null}]}},
        ]})
    }

    const RESTORED_SAVE: &str = "# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n\
        :INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A FORWARD -i ve-a -m comment --comment \"rnet: from our links\" -j ACCEPT\n\
        -A FORWARD -o ve-a -m comment --comment \"rnet: to our links\" -j ACCEPT\n\
        -A FORWARD -i eth9 -m comment --comment \"admin \\\"rnet: \\\" look-alike\" -j ACCEPT\n\
        -A FORWARD -i ve-a -m comment --comment \"rnet: from our links\" -j ACCEPT\n\
        COMMIT\n";

    #[test]
    fn rules_restored_by_iptables_restore_are_recognised_through_iptables_save() {
        let listing = restored_listing();
        assert_eq!(
            restored_tables(&listing, &[]),
            [("ip", "filter".to_owned())]
        );
        // Without the save, only the rule nft added since is ours: the restored ones are not
        // seen, and a plan would add copies of them.
        assert_eq!(detect(&listing).ours.len(), 1);
        let view = detect_with_saves(&listing, &[("ip", RESTORED_SAVE)], &[]);
        let ours: Vec<(u32, &str)> = view
            .ours
            .iter()
            .map(|r| (r.handle, r.comment.as_str()))
            .collect();
        assert_eq!(
            ours,
            [
                (4, "rnet: from our links"),
                (5, "rnet: to our links"),
                (7, "rnet: from our links")
            ]
        );
        // Exactly one copy of each stays: the later duplicate goes, nothing is added.
        let cmds = batch_commands(&plan_host(&view, GROUP).unwrap());
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert_eq!(cmds[0]["delete"]["rule"]["handle"], 7);
        // With the last link all three go, and the admin's rule stays.
        let cmds = batch_commands(&plan_host(&view, None).unwrap());
        let handles: Vec<&Value> = cmds
            .iter()
            .map(|c| &c["delete"]["rule"]["handle"])
            .collect();
        assert_eq!(handles, [4, 5, 7]);
    }

    #[test]
    fn rules_known_from_the_last_look_need_no_save_unless_their_table_was_made_again() {
        let mut listing = restored_listing();
        let table = json!({"table": {"family": "ip", "name": "filter", "handle": 3}});
        listing["nftables"].as_array_mut().unwrap().insert(0, table);
        let first = detect_with_saves(&listing, &[("ip", RESTORED_SAVE)], &[]);
        assert_eq!(first.ours.len(), 3);
        assert!(first.ours.iter().all(|r| r.table_handle == Some(3)));
        // Known: no save needed, and the same rules found without it.
        assert_eq!(first.read_comments.len(), 3, "two of ours and the admin's");
        let known = &first.read_comments;
        assert!(restored_tables(&listing, known).is_empty());
        assert_eq!(detect_with_saves(&listing, &[], known), first);
        // The same handles in a table made again are other rules: a save is needed.
        listing["nftables"][0]["table"]["handle"] = json!(9);
        assert_eq!(
            restored_tables(&listing, known),
            [("ip", "filter".to_owned())]
        );
        assert_eq!(detect_with_saves(&listing, &[], known).ours.len(), 1);
    }

    #[test]
    fn a_save_that_disagrees_with_the_listing_recognises_nothing() {
        let listing = restored_listing();
        // A rule added between the two listings: the counts differ.
        let longer = RESTORED_SAVE.replace("COMMIT", "-A FORWARD -j ACCEPT\nCOMMIT");
        assert_eq!(
            detect_with_saves(&listing, &[("ip", &longer)], &[])
                .ours
                .len(),
            1
        );
        // A comment where the listing has none.
        let moved = RESTORED_SAVE.replace(
            "-i eth9 -m comment --comment \"admin \\\"rnet: \\\" look-alike\"",
            "-i eth9",
        );
        assert_eq!(
            detect_with_saves(&listing, &[("ip", &moved)], &[])
                .ours
                .len(),
            1
        );
        // Another family's save, or a table iptables cannot read, says nothing of this one.
        assert_eq!(
            detect_with_saves(&listing, &[("ip6", RESTORED_SAVE)], &[])
                .ours
                .len(),
            1
        );
        let incompatible = "*filter\n# Table `filter' is incompatible, use 'nft' tool.\nCOMMIT\n";
        assert_eq!(
            detect_with_saves(&listing, &[("ip", incompatible)], &[])
                .ours
                .len(),
            1
        );
    }

    #[test]
    fn save_lines_are_split_as_iptables_quotes_them() {
        assert_eq!(
            split_words(r#"-A X -m comment --comment "a \"b\" \\c" -j ACCEPT"#),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                r#"a "b" \c"#,
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(
            split_words("-A X --comment plain"),
            ["-A", "X", "--comment", "plain"]
        );
        assert_eq!(split_words(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn a_table_left_to_another_mechanism_loses_our_rules() {
        let listing = json!({"nftables": [
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_INPUT",
                       "type": "filter", "hook": "input", "prio": 10, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_INPUT",
                      "handle": 3, "comment": "rnet: DHCP udp from ve-a",
                      "expr": [{"accept": null}]}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_INPUT",
                      "handle": 4, "expr": [{"reject": null}]}},
        ]});
        let view = detect(&listing);
        assert_eq!(view.chains.len(), 1);
        assert!(restored_tables(&listing, &[]).is_empty());
        let view = view.without_tables(&["firewalld"]);
        assert!(view.chains.is_empty());
        let cmds = batch_commands(&plan_host(&view, GROUP).unwrap());
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0]["delete"]["rule"]["handle"], 3);
    }

    /// `nft -j list chains` of a host with Docker (iptables-nft `ip filter` and `ip nat`), CNI's
    /// per-container nat chains, a hardened `inet` input chain, a `netdev` ingress chain, a nat
    /// base chain on forward's neighbour hook, and our own tables.
    const CHAINS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 1,
                   "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"chain": {"family": "ip", "table": "nat", "name": "CNI-0123", "handle": 2}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 2}},
        {"chain": {"family": "inet", "table": "host-fw", "name": "in", "handle": 1,
                   "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "x\nflush ruleset", "name": "in", "handle": 1,
                   "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "netdev", "table": "edge", "name": "in", "handle": 1,
                   "type": "filter", "hook": "ingress", "dev": "eth0", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "ip6", "table": "mangle", "name": "FORWARD", "handle": 1,
                   "type": "route", "hook": "output", "prio": -150, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "rnet", "name": "forward", "handle": 1,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "bridge", "table": "rnet", "name": "prerouting", "handle": 1,
                   "type": "filter", "hook": "prerouting", "prio": -200, "policy": "accept"}}
    ]}"#;

    #[test]
    fn only_tables_with_a_filter_chain_on_forward_or_input_are_listed() {
        let tables = hooked_tables(CHAINS).unwrap();
        // Not the table whose name would be a second command on nft's command line.
        let expected: Vec<TableRef> = [("ip", "filter"), ("inet", "host-fw")]
            .into_iter()
            .map(|(f, t)| (f.to_owned(), t.to_owned()))
            .collect();
        assert_eq!(tables, expected);
        assert!(hooked_tables(r#"{"nftables": []}"#).unwrap().is_empty());
        assert!(hooked_tables("Error: no such file").is_err());
        assert!(hooked_tables(r#"{"nftables": [{"chain": {"family": 4}}]}"#).is_err());
    }

    #[test]
    fn the_hooked_tables_alone_show_what_the_whole_ruleset_shows() {
        let listing = recorded("docker-like.json");
        let filter = table_of(&listing, "ip", "filter").unwrap();
        // The table's own object is "name"d, the others name their "table".
        let objects = filter["nftables"].as_array().unwrap();
        assert!(objects.len() > 2);
        assert!(objects.iter().all(|o| {
            let inner = o.as_object().unwrap().values().next().unwrap();
            inner["family"] == "ip" && (inner["table"] == "filter" || inner["name"] == "filter")
        }));
        assert_eq!(table_of(&listing, "ip", "nat"), None);
        // The tables `list chains` names, listed one by one, are all a look needs.
        let tables = hooked_tables(&listing.to_string()).unwrap();
        assert_eq!(tables.len(), 3);
        let merged: Vec<Value> = tables
            .iter()
            .flat_map(|(f, t)| {
                table_of(&listing, f, t).unwrap()["nftables"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect();
        let merged = json!({ "nftables": merged });
        assert_eq!(detect(&merged), detect(&listing));
        assert!(!detect(&merged).chains.is_empty());
    }
}

//! The kernel boundary: [`Nft`] (and [`AsyncNft`]) apply batches and list our table. [`NftCli`]
//! runs the `nft` program (listing through `nftables::helper`, applying with `nft -j -f -` of its
//! own, to keep nft's stderr, or, with [`NftCli::with_session`], through one long-lived
//! `nft -j -i`); `FakeNft` (feature `testing`) records and simulates.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io::{self, Write};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use nftables::helper::{self, NftablesError};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;

use crate::elements::render_changes;
use crate::error::{Error, Result};
use crate::hostfw::XtInsert;
use crate::model::Change;
use crate::names::TABLE;
use crate::netlink::NfNetlink;

#[cfg(any(test, feature = "testing"))]
pub use crate::fake::FakeNft;

/// Our tables, as `nft list table` names their family, in listing order.
const FAMILIES: [&str; 2] = ["inet", "bridge"];
/// `nft` arguments (after `-j`) that list every table, to tell "no table" from a failure.
const LIST_TABLES: [&str; 2] = ["list", "tables"];

/// `nft` arguments (after `-j`) that list our table of `family`.
fn list_args(family: &'static str) -> [&'static str; 4] {
    ["list", "table", family, TABLE]
}

/// Step name of listing our table of `family`, in errors.
fn listing(family: &str) -> String {
    format!("listing table {family} {TABLE}")
}

/// Applies batches to the kernel's nftables and lists tables `inet rnet` and `bridge rnet`. The
/// only code that touches nftables; `FakeNft` stands in for it in tests
/// (`docs/architecture.md#conventions`).
pub trait Nft {
    /// Applies `batch` atomically: all of it or, on error, nothing (`nft -j -f -`).
    fn apply(&mut self, batch: &Nftables<'_>) -> Result<()>;

    /// Lists table `inet rnet` then table `bridge rnet` (`nft -j list table ...`), as one
    /// listing; `None` if neither exists, e.g. after `nft flush ruleset`.
    fn list_table(&mut self) -> Result<Option<Nftables<'static>>>;

    /// Lists the whole ruleset, every table of every family (`nft -j list ruleset`), as JSON:
    /// other firewalls' tables hold expressions the `nftables` crate cannot read (see
    /// [`crate::hostfw::detect`]).
    fn list_ruleset(&mut self) -> Result<serde_json::Value>;
}

/// [`Nft`] for async callers: the `nft` process runs without blocking the executor.
pub trait AsyncNft: Send {
    /// Async [`Nft::apply`].
    fn apply_async(&mut self, batch: &Nftables<'_>) -> impl Future<Output = Result<()>> + Send;

    /// Applies the element changes of `changes` as one atomic batch, what
    /// [`crate::render_changes`] renders; by default through [`AsyncNft::apply_async`].
    fn apply_changes_async(
        &mut self,
        changes: &[Change],
    ) -> impl Future<Output = Result<()>> + Send {
        let batch = render_changes(changes);
        async move { self.apply_async(&batch).await }
    }

    /// Async [`Nft::list_table`].
    fn list_table_async(
        &mut self,
    ) -> impl Future<Output = Result<Option<Nftables<'static>>>> + Send;

    /// Async [`Nft::list_ruleset`].
    fn list_ruleset_async(&mut self) -> impl Future<Output = Result<serde_json::Value>> + Send;

    /// `nft -j list chains`: every chain of every table without its rules, as nft prints it
    /// (for [`crate::hostfw::hooked_tables`]). By default the whole ruleset's listing, which
    /// holds the same chains.
    fn list_chains_async(&mut self) -> impl Future<Output = Result<String>> + Send {
        async move { Ok(self.list_ruleset_async().await?.to_string()) }
    }

    /// `nft -j list table FAMILY NAME` of any table, e.g. another firewall's; `None` if it does
    /// not exist. By default cut from the whole ruleset's listing.
    fn list_any_table_async(
        &mut self,
        family: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>>> + Send {
        async move {
            let all = self.list_ruleset_async().await?;
            Ok(crate::hostfw::table_of(&all, family, name))
        }
    }

    /// The ruleset's generation ([`NfNetlink::generation`]), if this handle can read it: equal
    /// numbers mean that no table changed in between. `None` (the default) means unknown.
    fn generation(&mut self) -> Option<u32> {
        None
    }

    /// Inserts a rule of ours into a table iptables may manage, as iptables does
    /// ([`insert_with_iptables`] for the real one). No default: a stand-in must never reach the
    /// real `iptables` of the machine it runs on.
    fn insert_xt(&mut self, rule: &XtInsert) -> impl Future<Output = Result<()>> + Send;
}

/// How long an `iptables` run may take.
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(5);

/// The programs of iptables-nft for `family` (`ip`: iptables, `ip6`: ip6tables) and `tool`
/// (`""`, or `"-save"`): the nft variant under its own name (`iptables-nft-save`), then the plain
/// name (`iptables-save`, which may be the legacy variant). `None` for another family.
pub fn iptables_programs(family: &str, tool: &str) -> Option<[String; 2]> {
    let base = match family {
        "ip" => "iptables",
        "ip6" => "ip6tables",
        _ => return None,
    };
    Some([format!("{base}-nft{tool}"), format!("{base}{tool}")])
}

/// Runs iptables' `program` with `args`, for at most [`IPTABLES_TIMEOUT`]: its standard output,
/// or why not (with `step`, what it was for).
pub async fn run_iptables(program: &str, args: &[String], step: &str) -> Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(IPTABLES_TIMEOUT, output)
        .await
        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
        .map_err(|source| Error::Run {
            program: program.to_owned(),
            step: step.to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Refused {
            program: program.to_owned(),
            step: step.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `iptables -w -t TABLE -I CHAIN ARGS` (`ip6tables` for family `ip6`) of iptables-nft:
/// `iptables-nft` where it is installed under that name, else `iptables` once `iptables -V`
/// says `(nf_tables)` (the legacy variant writes into the kernel's other tables, where nft's
/// chains are not).
pub async fn insert_with_iptables(rule: &XtInsert) -> Result<()> {
    let step = format!(
        "inserting \"{}\" into {} {} {}",
        rule.args.join(" "),
        rule.family,
        rule.table,
        rule.chain
    );
    let Some([nft_variant, plain]) = iptables_programs(&rule.family, "") else {
        return Err(Error::Refused {
            program: "iptables".to_owned(),
            step,
            stderr: format!("iptables has no family {}", rule.family),
        });
    };
    let mut args: Vec<String> = ["-w", "-t", &rule.table, "-I", &rule.chain]
        .map(String::from)
        .to_vec();
    args.extend(rule.args.iter().cloned());
    match run_iptables(&nft_variant, &args, &step).await {
        Err(Error::Run { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        done => return done.map(drop),
    }
    let version = run_iptables(&plain, &["-V".to_owned()], &step).await?;
    if !version.contains("nf_tables") {
        return Err(Error::Refused {
            program: plain.clone(),
            step,
            stderr: format!("{plain} is not iptables-nft: {}", version.trim()),
        });
    }
    run_iptables(&plain, &args, &step).await.map(drop)
}

/// The real [`Nft`]: runs the `nft` program (package `nftables`) with JSON in and out.
///
/// `nft` is a child process: it works in the network namespace of the *thread* that calls, which
/// is how tests point it at a private namespace.
#[derive(Clone, Debug)]
pub struct NftCli {
    program: OsString,
    /// The long-lived `nft -j -i` of [`NftCli::with_session`], shared by clones; started on first
    /// use.
    session: Option<Arc<tokio::sync::Mutex<Option<Session>>>>,
    /// The nf_tables socket of [`NftCli::with_netlink`], shared by clones.
    netlink: Option<Arc<std::sync::Mutex<NfNetlink>>>,
    /// How often the session failed or did not answer and was dropped, shared by clones.
    session_drops: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for NftCli {
    fn default() -> Self {
        Self::new()
    }
}

impl NftCli {
    /// Runs `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_program("nft")
    }

    /// Runs `program` instead of `nft` from `PATH` (e.g. `/usr/sbin/nft`).
    pub fn with_program(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            session: None,
            netlink: None,
            session_drops: Arc::default(),
        }
    }

    /// Applies async batches through one long-lived `nft -j -i` instead of an `nft` process per
    /// batch (listings still run `nft` each). Starting `nft`, loading its libraries and reading
    /// the kernel's tables costs tens of milliseconds a batch on a busy machine; a batch given to
    /// a running `nft -i` costs about one. Each input line is still one atomic transaction, and
    /// nft's error text is the error's. The process starts on first use, in the network
    /// namespace of the thread that uses it then (the daemon's), and is started again after it
    /// failed or did not answer within [`SESSION_TIMEOUT`].
    pub fn with_session(mut self) -> Self {
        self.session = Some(Arc::new(tokio::sync::Mutex::new(None)));
        self
    }

    /// Sends element changes ([`AsyncNft::apply_changes_async`]) to nf_tables over netlink
    /// ([`crate::netlink`]) instead of through `nft`, which reads every interval set's elements
    /// back before each batch: a change then costs the same with 1 or 1000 containers. The
    /// socket is opened here, in the calling thread's network namespace. A batch the socket
    /// fails or the kernel refuses is given to `nft` as before, so a refusal keeps nft's words.
    pub fn with_netlink(mut self) -> io::Result<Self> {
        self.netlink = Some(Arc::new(std::sync::Mutex::new(NfNetlink::open()?)));
        Ok(self)
    }

    /// How often the session of [`NftCli::with_session`] failed or did not answer in time and
    /// was dropped (the next use starts another).
    pub fn session_drops(&self) -> u64 {
        self.session_drops
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn dropped_session(&self) {
        self.session_drops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The program this runs.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// Runs the listing `command` (e.g. `list table ip filter`) through the session, if this
    /// handle has one: `Some(Ok(json))`, or `Some(Err(text))` with nft's error. `None` without
    /// a session, or when the session failed (it is dropped, and the caller runs `nft` itself).
    async fn session_list(&self, command: &str) -> Option<std::result::Result<String, String>> {
        let session = self.session.as_ref()?;
        let mut session = session.lock().await;
        if session.is_none() {
            *session = Some(Session::start(&self.program).ok()?);
        }
        let running = session.as_mut()?;
        match tokio::time::timeout(SESSION_TIMEOUT, running.list(command)).await {
            Ok(Ok(answer)) => Some(answer),
            _ => {
                *session = None; // killed on drop; the next use starts another
                self.dropped_session();
                None
            }
        }
    }

    /// Async [`NftCli::list_one`] through the session; `None` without one.
    async fn session_list_one(
        &self,
        family: &'static str,
    ) -> Option<Result<Option<Nftables<'static>>>> {
        let refused = |stderr: String| Error::Refused {
            program: self.program_name(),
            step: listing(family),
            stderr,
        };
        match self.session_list(&list_args(family).join(" ")).await? {
            Ok(json) => Some(parse_listing(&json, &self.program_name(), family).map(Some)),
            Err(failure) => match self.session_list(&LIST_TABLES.join(" ")).await? {
                Ok(tables) if !lists_our_table(&tables, family) => Some(Ok(None)),
                _ => Some(Err(refused(failure))),
            },
        }
    }

    /// What to make of a failed `list table`, given the outcome of `list tables`.
    fn missing_or(
        &self,
        family: &str,
        failure: NftablesError,
        tables: Result<String, NftablesError>,
    ) -> Result<Option<Nftables<'static>>> {
        match tables {
            Ok(json) if !lists_our_table(&json, family) => Ok(None),
            _ => Err(nft_error(failure, self.program_name(), listing(family))),
        }
    }

    /// Our table of `family`, or `None` if it does not exist.
    fn list_one(&self, family: &'static str) -> Result<Option<Nftables<'static>>> {
        match helper::get_current_ruleset_raw(Some(&self.program), &list_args(family)) {
            Ok(json) => parse_listing(&json, &self.program_name(), family).map(Some),
            Err(failure @ NftablesError::NftFailed { .. }) => {
                let tables = helper::get_current_ruleset_raw(Some(&self.program), &LIST_TABLES);
                self.missing_or(family, failure, tables)
            }
            Err(e) => Err(nft_error(e, self.program_name(), listing(family))),
        }
    }

    /// Async [`NftCli::list_one`].
    async fn list_one_async(&self, family: &'static str) -> Result<Option<Nftables<'static>>> {
        let args = list_args(family);
        match helper::get_current_ruleset_raw_async(Some(&self.program), &args).await {
            Ok(json) => parse_listing(&json, &self.program_name(), family).map(Some),
            Err(failure @ NftablesError::NftFailed { .. }) => {
                let tables =
                    helper::get_current_ruleset_raw_async(Some(&self.program), &LIST_TABLES).await;
                self.missing_or(family, failure, tables)
            }
            Err(e) => Err(nft_error(e, self.program_name(), listing(family))),
        }
    }
}

/// `nft` arguments (after `-j`) that list every table.
const LIST_RULESET: [&str; 2] = ["list", "ruleset"];
/// Step name of listing the ruleset, in errors.
const LISTING_RULESET: &str = "listing the ruleset";

/// Reads `nft -j list ruleset` output as JSON.
fn parse_ruleset(json: &str, program: &str) -> Result<serde_json::Value> {
    serde_json::from_str(json).map_err(|e| Error::Output {
        program: program.to_owned(),
        step: LISTING_RULESET.to_owned(),
        detail: e.to_string(),
    })
}

/// One listing of the tables that exist, in [`FAMILIES`] order; `None` if none does.
fn merge(listings: Vec<Option<Nftables<'static>>>) -> Option<Nftables<'static>> {
    let mut objects = Vec::new();
    let mut any = false;
    for listing in listings.into_iter().flatten() {
        any = true;
        objects.extend(listing.objects.iter().cloned());
    }
    any.then(|| Nftables {
        objects: objects.into(),
    })
}

/// `nft` arguments that read a JSON batch from stdin.
const APPLY: [&str; 3] = ["-j", "-f", "-"];

impl Nft for NftCli {
    /// Runs `nft -j -f -` with the batch on stdin. (Not through `nftables::helper`: its apply
    /// lets nft's stderr, which names the refused object, go to our stderr instead of the error.)
    fn apply(&mut self, batch: &Nftables<'_>) -> Result<()> {
        let step = applying(batch);
        let payload = serialize(batch, &self.program_name(), &step)?;
        let run_error = |source| Error::Run {
            program: self.program_name(),
            step: step.clone(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(APPLY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(run_error)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // nft reads all of its input before it writes anything, so this cannot deadlock.
        let written = stdin.write_all(payload.as_bytes());
        drop(stdin);
        let output = child.wait_with_output().map_err(run_error)?;
        check(output, written, &self.program_name(), step)
    }

    fn list_table(&mut self) -> Result<Option<Nftables<'static>>> {
        let listings = FAMILIES
            .into_iter()
            .map(|family| self.list_one(family))
            .collect::<Result<Vec<_>>>()?;
        Ok(merge(listings))
    }

    fn list_ruleset(&mut self) -> Result<serde_json::Value> {
        let json = helper::get_current_ruleset_raw(Some(&self.program), &LIST_RULESET)
            .map_err(|e| nft_error(e, self.program_name(), LISTING_RULESET.to_owned()))?;
        parse_ruleset(&json, &self.program_name())
    }
}

impl AsyncNft for NftCli {
    async fn insert_xt(&mut self, rule: &XtInsert) -> Result<()> {
        insert_with_iptables(rule).await
    }

    async fn apply_async(&mut self, batch: &Nftables<'_>) -> Result<()> {
        let step = applying(batch);
        let payload = serialize(batch, &self.program_name(), &step)?;
        let run_error = |source| Error::Run {
            program: self.program_name(),
            step: step.clone(),
            source,
        };
        if let Some(session) = &self.session {
            let mut session = session.lock().await;
            if session.is_none() {
                *session = Some(Session::start(&self.program).map_err(run_error)?);
            }
            let running = session.as_mut().expect("started above");
            let outcome = tokio::time::timeout(SESSION_TIMEOUT, running.apply(&payload)).await;
            return match outcome {
                Ok(Ok(errors)) if errors.is_empty() => Ok(()),
                Ok(Ok(errors)) => Err(Error::Refused {
                    program: self.program_name(),
                    step,
                    stderr: errors,
                }),
                Ok(Err(e)) => {
                    *session = None; // killed on drop; the next batch starts another
                    self.dropped_session();
                    Err(run_error(e))
                }
                Err(_) => {
                    *session = None;
                    self.dropped_session();
                    Err(run_error(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from nft -i within {SESSION_TIMEOUT:?}"),
                    )))
                }
            };
        }
        let mut child = tokio::process::Command::new(&self.program)
            .args(APPLY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(run_error)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let written = stdin.write_all(payload.as_bytes()).await;
        drop(stdin);
        let output = child.wait_with_output().await.map_err(run_error)?;
        check(output, written, &self.program_name(), step)
    }

    async fn apply_changes_async(&mut self, changes: &[Change]) -> Result<()> {
        if let Some(netlink) = &self.netlink {
            let sent = netlink
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .apply(changes);
            if sent.is_ok() {
                return Ok(());
            }
        }
        self.apply_async(&render_changes(changes)).await
    }

    async fn list_table_async(&mut self) -> Result<Option<Nftables<'static>>> {
        let mut listings = Vec::new();
        for family in FAMILIES {
            let listing = match self.session_list_one(family).await {
                Some(listed) => listed?,
                None => self.list_one_async(family).await?,
            };
            listings.push(listing);
        }
        Ok(merge(listings))
    }

    async fn list_ruleset_async(&mut self) -> Result<serde_json::Value> {
        let json = helper::get_current_ruleset_raw_async(Some(&self.program), &LIST_RULESET)
            .await
            .map_err(|e| nft_error(e, self.program_name(), LISTING_RULESET.to_owned()))?;
        parse_ruleset(&json, &self.program_name())
    }

    async fn list_chains_async(&mut self) -> Result<String> {
        const STEP: &str = "listing the chains";
        if let Some(answer) = self.session_list("list chains").await {
            return answer.map_err(|stderr| Error::Refused {
                program: self.program_name(),
                step: STEP.to_owned(),
                stderr,
            });
        }
        helper::get_current_ruleset_raw_async(Some(&self.program), &["list", "chains"])
            .await
            .map_err(|e| nft_error(e, self.program_name(), STEP.to_owned()))
    }

    async fn list_any_table_async(
        &mut self,
        family: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>> {
        let step = format!("listing table {family} {name}");
        let args = ["list", "table", family, name];
        let listed = match self.session_list(&args.join(" ")).await {
            Some(Ok(json)) => Ok(json),
            Some(Err(stderr)) => Err(NftablesError::NftFailed {
                program: self.program.clone(),
                hint: step.clone(),
                stdout: String::new(),
                stderr,
            }),
            None => helper::get_current_ruleset_raw_async(Some(&self.program), &args).await,
        };
        match listed {
            Ok(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| Error::Output {
                    program: self.program_name(),
                    step,
                    detail: e.to_string(),
                }),
            // Gone since the chains were listed (nft: "No such file or directory").
            Err(NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(nft_error(e, self.program_name(), step)),
        }
    }

    fn generation(&mut self) -> Option<u32> {
        let netlink = self.netlink.as_ref()?;
        netlink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .generation()
            .ok()
    }
}

/// How long a batch given to the long-lived `nft -i` may take before the process is dropped.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `nft -j -i`: one JSON batch per input line, each its own transaction. nft answers
/// nothing on success and its error text on stderr on failure, so each batch is followed by a
/// marker line that nft cannot parse (`{"rnet-sync":N}`): its error, which echoes the line, ends
/// the batch's answer on stderr. What came before the marker's own error line is the batch's.
#[derive(Debug)]
struct Session {
    /// Kept for `kill_on_drop`.
    _child: Child,
    stdin: ChildStdin,
    /// Listings' JSON, one line each ([`Session::list`]); batches print nothing here.
    stdout: BufReader<ChildStdout>,
    stderr: BufReader<ChildStderr>,
    seq: u64,
}

impl Session {
    fn start(program: &OsStr) -> io::Result<Self> {
        let mut child = tokio::process::Command::new(program)
            .args(["-j", "-i"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        Ok(Self {
            _child: child,
            stdin,
            stdout,
            stderr,
            seq: 0,
        })
    }

    /// Runs one listing command (`list table inet rnet`): its JSON, or nft's error text. nft
    /// prints a listing as one line on stdout, then its errors (none) and the marker's on
    /// stderr. Both are read at once: a listing larger than the pipe (`list chains` beside a
    /// peer's thousands of chains) would otherwise keep nft from reaching the marker.
    async fn list(&mut self, command: &str) -> io::Result<std::result::Result<String, String>> {
        let marker = self.send(command).await?;
        let Self { stdout, stderr, .. } = self;
        let mut line = String::new();
        let errors = {
            let listing = stdout.read_line(&mut line);
            tokio::pin!(listing);
            let answer = Self::answer(stderr, &marker);
            tokio::pin!(answer);
            let mut listed = None;
            loop {
                tokio::select! {
                    n = &mut listing, if listed.is_none() => listed = Some(n?),
                    errors = &mut answer => break match (errors?, listed) {
                        (errors, _) if !errors.is_empty() => Err(errors),
                        (_, Some(n)) => Ok(n),
                        (_, None) => Ok(listing.await?),
                    },
                }
            }
        };
        match errors {
            Err(errors) => Ok(Err(errors)),
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "nft -i exited",
            )),
            // Out of step (something printed that was not a listing): start afresh.
            Ok(_) if !line.starts_with("{\"nftables\"") => Err(io::Error::other(format!(
                "nft -i printed something other than a listing: {}",
                line.chars().take(80).collect::<String>()
            ))),
            Ok(_) => Ok(Ok(line)),
        }
    }

    /// Runs one input line (`payload`: a JSON batch, or a command) as its own transaction;
    /// returns nft's error text, empty when it was accepted.
    async fn apply(&mut self, payload: &str) -> io::Result<String> {
        let marker = self.send(payload).await?;
        Self::answer(&mut self.stderr, &marker).await
    }

    /// Writes one input line and a marker line after it; returns the marker.
    async fn send(&mut self, payload: &str) -> io::Result<String> {
        debug_assert!(!payload.contains('\n'), "a batch is one line");
        self.seq += 1;
        let marker = format!("{{\"rnet-sync\":{}}}", self.seq);
        self.stdin
            .write_all(format!("{payload}\n{marker}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(marker)
    }

    /// nft's error text for the line before `marker`: what stderr holds before the marker's
    /// own error, empty when there was none.
    async fn answer(stderr: &mut BufReader<ChildStderr>, marker: &str) -> io::Result<String> {
        let mut lines: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "nft -i exited",
                ));
            }
            if line.trim_end() == marker {
                // The marker's error: its message (the line before), the echo, a caret line.
                lines.pop();
                let mut caret = String::new();
                stderr.read_line(&mut caret).await?;
                break;
            }
            lines.push(line);
        }
        Ok(lines.concat().trim().to_owned())
    }
}

fn serialize(batch: &Nftables<'_>, program: &str, step: &str) -> Result<String> {
    serde_json::to_string(batch).map_err(|e| Error::Output {
        program: program.to_owned(),
        step: step.to_owned(),
        detail: format!("the batch does not serialize: {e}"),
    })
}

/// The outcome of an `nft -f -` run: its exit status first (a refusal explains a broken pipe),
/// then the write of the batch to its stdin.
fn check(output: Output, written: io::Result<()>, program: &str, step: String) -> Result<()> {
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let stderr = if stderr.is_empty() {
            format!("exit status {}", output.status)
        } else {
            stderr
        };
        return Err(Error::Refused {
            program: program.to_owned(),
            step,
            stderr,
        });
    }
    written.map_err(|source| Error::Run {
        program: program.to_owned(),
        step,
        source,
    })
}

/// True if a `nft -j list tables` output lists our table of `family`.
fn lists_our_table(json: &str, family: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return true; // unreadable: do not claim the table is missing
    };
    let objects = value["nftables"].as_array().cloned().unwrap_or_default();
    objects.iter().any(|o| {
        let t = &o["table"];
        t["family"] == family && t["name"] == TABLE
    })
}

/// Reads `nft -j list table` output into the crate's types.
///
/// nft 1.0.x prints the value type of a map with concatenated values as one string
/// (`"map": "ipv4_addr . inet_service"`), which the `nftables` crate (0.6) cannot read; it is
/// turned into the array form nft accepts on input before deserializing.
pub(crate) fn parse_listing(json: &str, program: &str, family: &str) -> Result<Nftables<'static>> {
    let unreadable = |detail: String| Error::Output {
        program: program.to_owned(),
        step: listing(family),
        detail,
    };
    let mut value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| unreadable(e.to_string()))?;
    if let Some(objects) = value["nftables"].as_array_mut() {
        for object in objects {
            if let Some(data) = object.get_mut("map").and_then(|m| m.get_mut("map"))
                && let Some(text) = data.as_str().filter(|t| t.contains(" . "))
            {
                *data = text.split(" . ").collect();
            }
        }
    }
    serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))
}

/// `applying <summary>` for errors: names the objects a batch touches.
fn applying(batch: &Nftables<'_>) -> String {
    format!("applying {}", summarize(batch))
}

/// A short description of a batch: `tables inet rnet, bridge rnet (16 sets and maps, 7 chains,
/// 34 rules)`, or the element commands per set: `add element ports4 x2, delete element ports4
/// x2`.
pub fn summarize(batch: &Nftables<'_>) -> String {
    // The last table command wins: `add; delete; add` creates, `add; delete` deletes.
    let mut table_verb = None;
    let mut tables: Vec<String> = Vec::new();
    let (mut sets, mut chains, mut rules) = (0, 0, 0);
    // Element commands, consecutive ones on the same set with the same verb merged.
    let mut elements: Vec<(&str, &str, usize)> = Vec::new();
    let mut other = 0;
    for object in batch.objects.iter() {
        let NfObject::CmdObject(cmd) = object else {
            other += 1;
            continue;
        };
        let (verb, obj) = match cmd {
            NfCmd::Add(obj) => ("add", obj),
            NfCmd::Delete(obj) => ("delete", obj),
            NfCmd::Insert(obj) => ("insert", obj),
            _ => {
                other += 1;
                continue;
            }
        };
        match obj {
            NfListObject::Table(t) => {
                table_verb = Some(verb);
                let name = format!("{} {}", family_name(t.family), t.name);
                if !tables.contains(&name) {
                    tables.push(name);
                }
            }
            NfListObject::Set(_) | NfListObject::Map(_) => sets += 1,
            NfListObject::Chain(_) => chains += 1,
            NfListObject::Rule(_) => rules += 1,
            NfListObject::Element(e) => match elements.last_mut() {
                Some((v, set, count)) if *v == verb && *set == e.name => *count += e.elem.len(),
                _ => elements.push((verb, &e.name, e.elem.len())),
            },
            _ => other += 1,
        }
    }
    let tables = match tables.len() {
        1 => format!("table {}", tables[0]),
        _ => format!("tables {}", tables.join(", ")),
    };
    let mut parts = Vec::new();
    if table_verb == Some("add") {
        parts.push(format!(
            "{tables} ({sets} sets and maps, {chains} chains, {rules} rules)"
        ));
    } else if sets + chains + rules > 0 {
        parts.push(format!(
            "{sets} sets and maps, {chains} chains, {rules} rules"
        ));
    } else if table_verb == Some("delete") {
        parts.push(format!("the deletion of {tables}"));
    }
    for (verb, set, count) in &elements {
        parts.push(format!("{verb} element {set} x{count}"));
    }
    if other > 0 {
        parts.push(format!("{other} other commands"));
    }
    if parts.is_empty() {
        "an empty batch".to_owned()
    } else {
        parts.join(", ")
    }
}

/// How `nft` spells a family.
pub(crate) fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// Maps the `nftables` crate's error to ours, keeping nft's stderr (which names the object).
fn nft_error(error: NftablesError, program: String, step: String) -> Error {
    match error {
        NftablesError::NftExecution { inner, .. } => Error::Run {
            program,
            step,
            source: inner,
        },
        NftablesError::NftFailed { stderr, .. } => Error::Refused {
            program,
            step,
            stderr: stderr.trim().to_owned(),
        },
        NftablesError::NftOutputEncoding { inner, .. } => Error::Output {
            program,
            step,
            detail: inner.to_string(),
        },
        NftablesError::NftInvalidJson(inner) => Error::Output {
            program,
            step,
            detail: inner.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, IfName, Ruleset};
    use crate::{render_changes, render_delete_table, render_table};

    #[test]
    fn summaries_name_the_objects() {
        assert_eq!(
            summarize(&render_table(&Ruleset::new())),
            format!(
                "tables inet rnet, bridge rnet (18 sets and maps, 7 chains, {} rules)",
                crate::rule_count()
            )
        );
        assert_eq!(
            summarize(&render_delete_table()),
            "the deletion of tables inet rnet, bridge rnet"
        );
        let ve = IfName::new("ve-a").unwrap();
        let batch = render_changes(&[Change::DelIface(ve.clone()), Change::AddIface(ve)]);
        assert_eq!(
            summarize(&batch),
            "add element allowed_pairs x1, delete element allowed_pairs x1, \
             add element ifaces x1, delete element ifaces x1, \
             add element ifaces x1, add element allowed_pairs x1"
        );
        assert_eq!(summarize(&render_changes(&[])), "an empty batch");
    }

    #[test]
    fn listing_with_string_map_types_parses() {
        let json = r#"{"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "rnet", "handle": 1}},
            {"map": {"family": "inet", "name": "ports4", "table": "rnet",
                     "type": ["inet_proto", "inet_service"], "handle": 7,
                     "map": "ipv4_addr . inet_service",
                     "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.0.0.2", 80]}]]}}
        ]}"#;
        let parsed = parse_listing(json, "nft", "inet").unwrap();
        assert_eq!(parsed.objects.len(), 3);
        let err = parse_listing("{", "nft", "inet").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("could not read the output of nft for listing table inet rnet"),
            "{err}"
        );
    }

    #[test]
    fn our_table_is_found_in_list_tables() {
        let json = r#"{"nftables": [{"metainfo": {}},
            {"table": {"family": "ip", "name": "rnet", "handle": 1}},
            {"table": {"family": "inet", "name": "filter", "handle": 2}}]}"#;
        assert!(!lists_our_table(json, "inet"));
        let json = r#"{"nftables": [{"table": {"family": "inet", "name": "rnet", "handle": 3}}]}"#;
        assert!(lists_our_table(json, "inet"));
        assert!(!lists_our_table(json, "bridge"));
    }
}

//! `.nspawn` settings files (systemd.nspawn(5)): where they are found, whether they are
//! trusted, and their `[Exec]`, `[Files]` and `[Network]` sections parsed into typed values.
//!
//! Files in `/etc/systemd/nspawn/` and `/run/systemd/nspawn/` are trusted; `NAME.nspawn` beside
//! the image is not, and its privileged settings (binds and temporary file systems, network,
//! ports) are dropped with a warning, as systemd-nspawn does. Unknown sections and keys warn with
//! `file:line`; a bad value is an error with `file:line`. [`apply`] combines a file with the
//! command line as `--settings=` says (systemd-nspawn(1)).

use std::path::{Path, PathBuf};

use api::{IfName, IfPair, PortSpec, ZoneName};

use crate::cli::{RunArgs, SettingsMode as Mode};
use crate::container::hostfiles::{ResolvConf, Timezone};
use crate::container::userns;

/// The reason of a command-line option's refusal (`invalid --x="v": REASON`), for a file's
/// `invalid Key="v": REASON`.
fn strip_option(e: &str) -> &str {
    e.split_once(": ").map_or(e, |(_, why)| why)
}

/// The trusted directories, searched in this order.
pub const TRUSTED_DIRS: [&str; 2] = ["/etc/systemd/nspawn", "/run/systemd/nspawn"];

/// `[Network]`: each `Some`/non-empty field was set by the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkSettings {
    pub private: Option<bool>,
    pub virtual_ethernet: Option<bool>,
    pub veth_extra: Vec<IfPair>,
    pub interface: Vec<IfPair>,
    pub macvlan: Vec<IfPair>,
    pub ipvlan: Vec<IfPair>,
    pub bridge: Option<IfName>,
    pub zone: Option<ZoneName>,
    pub ports: Vec<PortSpec>,
}

impl NetworkSettings {
    /// Whether the file configured the network at all.
    pub fn is_set(&self) -> bool {
        *self != NetworkSettings::default()
    }
}

/// One settings file, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub path: PathBuf,
    pub trusted: bool,
    // [Exec]
    pub boot: Option<bool>,
    pub process_two: Option<bool>,
    pub parameters: Option<Vec<String>>,
    pub environment: Vec<String>,
    pub user: Option<String>,
    pub working_directory: Option<String>,
    pub hostname: Option<String>,
    pub private_users: Option<String>,
    pub no_new_privileges: Option<bool>,
    pub resolv_conf: Option<String>,
    pub timezone: Option<String>,
    // [Files]
    pub read_only: Option<bool>,
    pub bind: Vec<String>,
    pub bind_read_only: Vec<String>,
    pub temporary_file_system: Vec<String>,
    pub private_users_ownership: Option<String>,
    // [Network]
    pub network: NetworkSettings,
}

/// systemd's booleans (`parse_boolean()`).
fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// Splits a value into words as systemd's `extract_first_word()` with quotes: whitespace
/// separates, `"..."` and `'...'` group, `\` escapes the next character.
pub fn words(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                let next = chars.next().ok_or("a trailing backslash")?;
                cur.push(next);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("an unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// What reading a file gave besides its settings.
#[derive(Debug, Default)]
pub struct Report {
    /// `file:line: ...` warnings (unknown keys, untrusted settings ignored).
    pub warnings: Vec<String>,
}

/// Parses `text`, the contents of `path`. Errors name `path:line`.
pub fn parse(path: &Path, text: &str, trusted: bool) -> Result<(Settings, Report), String> {
    let mut s = Settings {
        path: path.to_owned(),
        trusted,
        ..Settings::default()
    };
    let mut report = Report::default();
    let mut section = String::new();
    let mut untrusted_network = None;
    let mut untrusted_files = None;
    let mut untrusted_userns = None;
    for (i, raw) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("{at}: a section header without ']'"))?;
            section = name.to_owned();
            if !matches!(name, "Exec" | "Files" | "Network") {
                report
                    .warnings
                    .push(format!("{at}: unknown section [{name}], ignoring it"));
            }
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("{at}: expected KEY=VALUE, got {line:?}"))?;
        let (key, value) = (key.trim(), value.trim());
        let bad = |what: &str| format!("{at}: invalid {key}={value:?}: {what}");
        let flag = || boolean(value).ok_or_else(|| bad("expected a boolean"));
        let pairs = || -> Result<Vec<IfPair>, String> {
            words(value)
                .map_err(|e| bad(&e))?
                .iter()
                .map(|w| w.parse::<IfPair>().map_err(|e| bad(&e.to_string())))
                .collect()
        };
        match (section.as_str(), key) {
            ("Exec", "Boot") => s.boot = Some(flag()?),
            ("Exec", "ProcessTwo") => s.process_two = Some(flag()?),
            ("Exec", "Parameters") => s.parameters = Some(words(value).map_err(|e| bad(&e))?),
            ("Exec", "Environment") => {
                for w in words(value).map_err(|e| bad(&e))? {
                    if !w.contains('=') || w.starts_with('=') {
                        return Err(bad("expected VAR=VALUE"));
                    }
                    s.environment.push(w);
                }
            }
            ("Exec", "User") => s.user = Some(value.to_owned()),
            ("Exec", "WorkingDirectory") => {
                if !value.starts_with('/') {
                    return Err(bad("expected an absolute path"));
                }
                s.working_directory = Some(value.to_owned());
            }
            ("Exec", "Hostname") => {
                api::MachineName::new(value).map_err(|e| bad(&e.to_string()))?;
                s.hostname = Some(value.to_owned());
            }
            ("Exec", "PrivateUsers") => {
                userns::Mode::parse(value).map_err(|e| bad(strip_option(&e)))?;
                if !trusted {
                    untrusted_userns.get_or_insert(at.clone());
                    continue;
                }
                s.private_users = Some(value.to_owned());
            }
            ("Exec", "NoNewPrivileges") => s.no_new_privileges = Some(flag()?),
            ("Exec", "ResolvConf") => {
                ResolvConf::parse(value).map_err(|e| bad(strip_option(&e)))?;
                s.resolv_conf = Some(value.to_owned());
            }
            ("Exec", "Timezone") => {
                Timezone::parse(value).map_err(|e| bad(strip_option(&e)))?;
                s.timezone = Some(value.to_owned());
            }
            ("Files", "ReadOnly") => s.read_only = Some(flag()?),
            ("Files", "Bind" | "BindReadOnly" | "TemporaryFileSystem") => {
                if !value.starts_with('/') && !value.starts_with('+') {
                    return Err(bad("expected an absolute path"));
                }
                if !trusted {
                    untrusted_files.get_or_insert(at.clone());
                    continue;
                }
                match key {
                    "Bind" => s.bind.push(value.to_owned()),
                    "BindReadOnly" => s.bind_read_only.push(value.to_owned()),
                    _ => s.temporary_file_system.push(value.to_owned()),
                }
            }
            ("Files", "PrivateUsersOwnership") => {
                userns::Ownership::parse(value).map_err(|e| bad(strip_option(&e)))?;
                if !trusted {
                    untrusted_userns.get_or_insert(at.clone());
                    continue;
                }
                s.private_users_ownership = Some(value.to_owned());
            }
            ("Network", _) => {
                let n = &mut s.network;
                let mut parsed = NetworkSettings::default();
                match key {
                    "Private" => parsed.private = Some(flag()?),
                    "VirtualEthernet" => parsed.virtual_ethernet = Some(flag()?),
                    "VirtualEthernetExtra" => parsed.veth_extra = pairs()?,
                    "Interface" => parsed.interface = pairs()?,
                    "MACVLAN" => parsed.macvlan = pairs()?,
                    "IPVLAN" => parsed.ipvlan = pairs()?,
                    "Bridge" => {
                        parsed.bridge =
                            Some(value.parse::<IfName>().map_err(|e| bad(&e.to_string()))?)
                    }
                    "Zone" => parsed.zone = Some(value.parse::<ZoneName>().map_err(|e| bad(&e))?),
                    "Port" => parsed.ports.push(
                        value
                            .parse()
                            .map_err(|e: api::PortError| bad(&e.to_string()))?,
                    ),
                    _ => {
                        report.warnings.push(format!(
                            "{at}: unknown setting {key}= in [Network], ignoring it"
                        ));
                        continue;
                    }
                }
                if !trusted {
                    untrusted_network.get_or_insert(at.clone());
                    continue;
                }
                n.private = parsed.private.or(n.private);
                n.virtual_ethernet = parsed.virtual_ethernet.or(n.virtual_ethernet);
                n.veth_extra.extend(parsed.veth_extra);
                n.interface.extend(parsed.interface);
                n.macvlan.extend(parsed.macvlan);
                n.ipvlan.extend(parsed.ipvlan);
                n.bridge = parsed.bridge.or(n.bridge.take());
                n.zone = parsed.zone.or(n.zone.take());
                n.ports.extend(parsed.ports);
            }
            ("Exec" | "Files", _) => report.warnings.push(format!(
                "{at}: unknown setting {key}= in [{section}], ignoring it"
            )),
            _ => {}
        }
    }
    if let Some(at) = untrusted_files {
        report.warnings.push(format!(
            "{at}: ignoring Bind=, BindReadOnly= and TemporaryFileSystem= settings, file {} is not trusted",
            path.display()
        ));
    }
    if let Some(at) = untrusted_userns {
        report.warnings.push(format!(
            "{at}: ignoring PrivateUsers= and PrivateUsersOwnership= settings, file {} is not trusted",
            path.display()
        ));
    }
    if let Some(at) = untrusted_network {
        report.warnings.push(format!(
            "{at}: ignoring network settings and Port=, file {} is not trusted",
            path.display()
        ));
    }
    Ok((s, report))
}

/// The settings file of machine `name`: the first of the trusted directories' `NAME.nspawn`,
/// else `NAME.nspawn` in `machines_dir` (beside the image; untrusted unless `trust_all`).
pub fn find(name: &str, machines_dir: &Path, trust_all: bool) -> Option<(PathBuf, bool)> {
    let file = format!("{name}.nspawn");
    TRUSTED_DIRS
        .iter()
        .map(|d| Path::new(d).join(&file))
        .find(|p| p.is_file())
        .map(|p| (p, true))
        .or_else(|| {
            let beside = machines_dir.join(&file);
            beside.is_file().then_some((beside, trust_all))
        })
}

/// Applies the settings file of a `-D` run to its arguments, as systemd-nspawn's
/// `merge_settings()`: each group of settings the file sets replaces the command line's only if
/// the command line left that group unset, or under `--settings=override`. The network is one
/// group: the file's network settings replace all of the command line's network options or none
/// of them, so the two are never mixed (nspawn can end up with a veth from one and a zone from
/// the other under `override`). Returns the warnings to print.
/// `default_name` is the machine's name when `-M` does not give one (the tree's base name).
pub fn apply(
    args: &mut RunArgs,
    mode: Mode,
    default_name: impl FnOnce(&Path) -> String,
) -> Result<Vec<String>, String> {
    let Some(dir) = args.directory.clone() else {
        return Ok(Vec::new());
    };
    if mode == Mode::No {
        return Ok(Vec::new());
    }
    let name = match &args.machine {
        Some(m) => m.to_string(),
        None => default_name(&dir),
    };
    // Beside the image: `PARENT/NAME.nspawn` for the tree `PARENT/NAME`.
    let beside_dir = std::path::absolute(&dir)
        .ok()
        .and_then(|d| d.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("."));
    let Some((s, report)) = load(&name, &beside_dir, mode == Mode::Trusted)? else {
        return Ok(Vec::new());
    };
    let warnings = report.warnings;
    let wins = mode == Mode::Override;
    if let Some(b) = s.boot
        && (wins || !args.boot)
    {
        args.boot = b;
    }
    if let Some(p) = s.process_two
        && (wins || !(args.as_pid1 || args.as_pid2))
    {
        args.as_pid2 = p;
        args.as_pid1 = !p && !args.boot;
    }
    if let Some(params) = s.parameters
        && (wins || args.command.is_empty())
    {
        args.command = params;
    }
    if !s.environment.is_empty() && (wins || args.setenv.is_empty()) {
        args.setenv = s.environment;
    }
    if let Some(u) = s.user
        && (wins || args.user.is_none())
    {
        args.user = Some(u);
    }
    if let Some(w) = s.working_directory
        && (wins || args.chdir.is_none())
    {
        args.chdir = Some(w.into());
    }
    if let Some(h) = s.hostname
        && (wins || args.hostname.is_none())
    {
        args.hostname = Some(h);
    }
    if let Some(n) = s.no_new_privileges
        && (wins || args.no_new_privileges.is_none())
    {
        args.no_new_privileges = Some(if n { "yes" } else { "no" }.into());
    }
    if let Some(r) = s.read_only
        && (wins || !args.read_only)
    {
        args.read_only = r;
    }
    let cli_binds = !(args.bind.is_empty() && args.bind_ro.is_empty() && args.tmpfs.is_empty());
    let file_binds =
        !(s.bind.is_empty() && s.bind_read_only.is_empty() && s.temporary_file_system.is_empty());
    if file_binds && (wins || !cli_binds) {
        args.bind = s.bind;
        args.bind_ro = s.bind_read_only;
        args.tmpfs = s.temporary_file_system;
    }
    if let Some(r) = s.resolv_conf
        && (wins || args.resolv_conf.is_none())
    {
        args.resolv_conf = Some(r);
    }
    if let Some(t) = s.timezone
        && (wins || args.timezone.is_none())
    {
        args.timezone = Some(t);
    }
    // PrivateUsers= and PrivateUsersOwnership= are one group (nspawn's `settings_load()`: either
    // both are set or neither; PrivateUsers=pick alone means chown, PrivateUsersOwnership= alone
    // means no user namespace). The file has them only when it is trusted (see `parse`).
    let cli_userns =
        args.userns || args.private_users.is_some() || args.private_users_ownership.is_some();
    if (s.private_users.is_some() || s.private_users_ownership.is_some()) && (wins || !cli_userns) {
        let mode = s.private_users.unwrap_or_else(|| "no".into());
        let ownership = s
            .private_users_ownership
            .unwrap_or_else(|| if mode == "pick" { "chown" } else { "off" }.into());
        args.userns = false;
        args.private_users = Some(mode);
        args.private_users_ownership = Some(ownership);
    }
    let n = s.network;
    let cli_network = args.private_network
        || args.network_veth
        || args.network_zone.is_some()
        || args.network_bridge.is_some()
        || !args.network_macvlan.is_empty()
        || !args.network_ipvlan.is_empty()
        || !args.network_interface.is_empty()
        || !args.network_veth_extra.is_empty();
    let ports = n.ports.clone();
    let file_network = NetworkSettings {
        ports: Vec::new(),
        ..n
    };
    if file_network.is_set() && (wins || !cli_network) {
        let veth = file_network.virtual_ethernet.unwrap_or(false)
            || file_network.zone.is_some()
            || file_network.bridge.is_some();
        args.network_veth = veth;
        args.private_network = file_network.private.unwrap_or(false) || veth;
        args.network_zone = file_network.zone;
        args.network_bridge = file_network.bridge;
        args.network_macvlan = file_network.macvlan;
        args.network_ipvlan = file_network.ipvlan;
        args.network_interface = file_network.interface;
        args.network_veth_extra = file_network.veth_extra;
    }
    if !ports.is_empty() && (wins || args.ports.is_empty()) {
        args.ports = ports;
    }
    Ok(warnings)
}

/// Reads and parses the settings file of machine `name`, if there is one.
pub fn load(
    name: &str,
    machines_dir: &Path,
    trust_all: bool,
) -> Result<Option<(Settings, Report)>, String> {
    let Some((path, trusted)) = find(name, machines_dir, trust_all) else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&path, &text, trusted).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str, trusted: bool) -> Result<(Settings, Report), String> {
        parse(Path::new("/m/x.nspawn"), text, trusted)
    }

    #[test]
    fn a_full_trusted_file() {
        let (s, r) = p(
            "# comment\n[Exec]\nBoot=yes\nParameters=sh -c 'echo a b'\nEnvironment=A=1 \"B=two words\"\n\
             User=nobody\nWorkingDirectory=/srv\nHostname=web\nPrivateUsers=pick\nResolvConf=copy-host\n\
             Timezone=off\n[Files]\nReadOnly=on\nBind=/a:/b\nBindReadOnly=/c\nTemporaryFileSystem=/tmp:size=1M\n\
             PrivateUsersOwnership=chown\n[Network]\nVirtualEthernet=yes\nZone=blue\nPort=tcp:8080:80\nPort=53\n\
             MACVLAN=eth0 eth1:mv1\n",
            true,
        )
        .unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(s.boot, Some(true));
        assert_eq!(
            s.parameters.as_deref(),
            Some(&["sh".to_owned(), "-c".into(), "echo a b".into()][..])
        );
        assert_eq!(s.environment, ["A=1", "B=two words"]);
        assert_eq!(s.working_directory.as_deref(), Some("/srv"));
        assert_eq!(s.read_only, Some(true));
        assert_eq!(s.bind, ["/a:/b"]);
        assert_eq!(s.temporary_file_system, ["/tmp:size=1M"]);
        assert_eq!(s.network.virtual_ethernet, Some(true));
        assert_eq!(s.network.zone.as_ref().map(|z| z.as_str()), Some("blue"));
        assert_eq!(s.network.ports.len(), 2);
        assert_eq!(s.network.macvlan.len(), 2);
    }

    #[test]
    fn an_untrusted_file_loses_its_privileged_settings_with_a_warning() {
        let (s, r) = p(
            "[Exec]\nBoot=yes\n[Files]\nBind=/etc\n[Network]\nPrivate=no\nPort=80\n",
            false,
        )
        .unwrap();
        assert_eq!(s.boot, Some(true));
        assert!(s.bind.is_empty());
        assert!(!s.network.is_set());
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("/m/x.nspawn:4: ignoring Bind="));
        assert!(r.warnings[1].contains("ignoring network settings and Port="));
    }

    #[test]
    fn unknown_keys_warn_and_bad_values_fail_with_file_and_line() {
        let (_, r) = p("[Exec]\nFrobnicate=1\n[Other]\nX=1\n", true).unwrap();
        assert_eq!(
            r.warnings,
            [
                "/m/x.nspawn:2: unknown setting Frobnicate= in [Exec], ignoring it",
                "/m/x.nspawn:3: unknown section [Other], ignoring it"
            ]
        );
        for (text, want) in [
            (
                "[Exec]\nBoot=maybe\n",
                "/m/x.nspawn:2: invalid Boot=\"maybe\": expected a boolean",
            ),
            (
                "[Exec]\n\nWorkingDirectory=srv\n",
                "/m/x.nspawn:3: invalid WorkingDirectory",
            ),
            (
                "[Network]\nZone=far-too-long-zone\n",
                "/m/x.nspawn:2: invalid Zone=",
            ),
            ("[Network]\nPort=tcp:0\n", "/m/x.nspawn:2: invalid Port="),
            ("[Exec]\nParameters=\"open\n", "an unterminated quote"),
            ("[Exec]\nEnvironment=NOVALUE\n", "expected VAR=VALUE"),
            ("[Exec\n", "/m/x.nspawn:1: a section header without ']'"),
            ("[Exec]\njunk\n", "/m/x.nspawn:2: expected KEY=VALUE"),
            (
                "[Exec]\nResolvConf=sometimes\n",
                "/m/x.nspawn:2: invalid ResolvConf=\"sometimes\": use off, delete, auto",
            ),
            (
                "[Exec]\nTimezone=utc\n",
                "/m/x.nspawn:2: invalid Timezone=\"utc\": use off, copy, bind",
            ),
            (
                "[Exec]\nPrivateUsers=lots\n",
                "/m/x.nspawn:2: invalid PrivateUsers=\"lots\": use no, yes, pick",
            ),
            (
                "[Files]\nPrivateUsersOwnership=maybe\n",
                "/m/x.nspawn:2: invalid PrivateUsersOwnership=\"maybe\": use off, chown",
            ),
        ] {
            let err = p(text, true).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn private_users_needs_trust_resolv_conf_and_timezone_do_not() {
        let text = "[Exec]\nPrivateUsers=pick\nResolvConf=copy-host\nTimezone=off\n[Files]\nPrivateUsersOwnership=map\n";
        let (s, r) = p(text, false).unwrap();
        assert_eq!(s.private_users, None);
        assert_eq!(s.private_users_ownership, None);
        assert_eq!(s.resolv_conf.as_deref(), Some("copy-host"));
        assert_eq!(s.timezone.as_deref(), Some("off"));
        assert_eq!(
            r.warnings,
            [
                "/m/x.nspawn:2: ignoring PrivateUsers= and PrivateUsersOwnership= settings, file /m/x.nspawn is not trusted"
            ]
        );
        let (s, r) = p(text, true).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(s.private_users.as_deref(), Some("pick"));
        assert_eq!(s.private_users_ownership.as_deref(), Some("map"));
    }

    /// `rnet run -D DIR/NAME ARGS` with `DIR/NAME.nspawn` holding `text`, trusted; the applied
    /// arguments and the warnings.
    fn applied(text: &str, args: &[&str]) -> (RunArgs, Vec<String>) {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("rnet-settings-apply-test");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.with_extension("nspawn"), text).unwrap();
        let tree_arg = tree.display().to_string();
        let mut argv = vec!["rnet", "run", "-D", &tree_arg];
        if !args.iter().any(|a| a.starts_with("--settings")) {
            argv.push("--settings=trusted");
        }
        argv.extend(args);
        let crate::cli::Command::Run(mut run) =
            crate::cli::Cli::try_parse_from(argv).unwrap().command
        else {
            panic!("not run")
        };
        let mode = run.settings;
        let warnings = apply(&mut run, mode, |_| "rnet-settings-apply-test".into()).unwrap();
        (run, warnings)
    }

    #[test]
    fn the_user_namespace_group_applies_whole_and_yields_to_the_command_line() {
        // PrivateUsers=pick alone means chown ownership (nspawn's settings_load()).
        let (a, w) = applied(
            "[Exec]\nPrivateUsers=pick\nResolvConf=bind-host\nTimezone=copy\n",
            &[],
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(a.private_users.as_deref(), Some("pick"));
        assert_eq!(a.private_users_ownership.as_deref(), Some("chown"));
        assert_eq!(a.resolv_conf.as_deref(), Some("bind-host"));
        assert_eq!(a.timezone.as_deref(), Some("copy"));
        // PrivateUsersOwnership= alone: no user namespace.
        let (a, _) = applied("[Files]\nPrivateUsersOwnership=map\n", &[]);
        assert_eq!(a.private_users.as_deref(), Some("no"));
        assert_eq!(a.private_users_ownership.as_deref(), Some("map"));
        // The command line's -U, --resolv-conf, --timezone win...
        let (a, _) = applied(
            "[Exec]\nPrivateUsers=identity\nResolvConf=off\nTimezone=off\n",
            &["-U", "--resolv-conf=delete", "--timezone=bind"],
        );
        assert!(a.userns);
        assert_eq!(a.private_users, None);
        assert_eq!(a.resolv_conf.as_deref(), Some("delete"));
        assert_eq!(a.timezone.as_deref(), Some("bind"));
        // ...unless the file overrides them (a file beside the tree is not trusted with
        // override alone: its PrivateUsers= is dropped, its ResolvConf= is not).
        let (a, w) = applied(
            "[Exec]\nPrivateUsers=identity\nResolvConf=off\n",
            &["-U", "--resolv-conf=delete", "--settings=override"],
        );
        assert!(a.userns);
        assert_eq!(a.resolv_conf.as_deref(), Some("off"));
        assert!(w[0].contains("ignoring PrivateUsers="), "{w:?}");
    }

    #[test]
    fn words_split_like_systemd() {
        assert_eq!(
            words("a  'b c' \"d\\\"e\" f\\ g").unwrap(),
            ["a", "b c", "d\"e", "f g"]
        );
        assert_eq!(words("").unwrap(), Vec::<String>::new());
        assert_eq!(words("''").unwrap(), [""]);
        assert!(words("a\\").is_err());
    }

    #[test]
    fn found_beside_the_image_untrusted_unless_trust_all() {
        let dir = tempfile::tempdir().unwrap();
        let name = "rnet-settings-test-machine";
        std::fs::write(dir.path().join(format!("{name}.nspawn")), "[Exec]\n").unwrap();
        assert_eq!(
            find(name, dir.path(), false),
            Some((dir.path().join(format!("{name}.nspawn")), false))
        );
        assert_eq!(find(name, dir.path(), true).map(|(_, t)| t), Some(true));
        assert_eq!(find("absent-machine-x", dir.path(), false), None);
    }
}

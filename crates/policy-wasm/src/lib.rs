//! Loads a policy component and runs its calls in a sandbox: no preopened directories, no
//! network, no environment, frozen clocks, bounded memory and bounded time per call. Every value
//! that comes back is validated before the host acts on it.

mod cache;
pub mod check;
mod sandbox;
mod v0_1;
mod v0_2;
mod versions;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use cache::{private_dir, store_artifact};
use sandbox::{call_error, engine, new_store, run_until, State, EPOCH_TICK, ERROR_LOGS};
pub use sandbox::{CALL_TIMEOUT, MEMORY_LIMIT, RESOURCE_LIMIT};
use versions::{Calls, Instance, Pre, World};

// The host's own types; re-exported here because they are the policy's vocabulary.
pub use ef_backup_core::model::{
    BackupDone, BackupEntry, BackupFailed, BackupOutcome, BackupSchedule, ErrorKind, HttpResponse, LastRun, Level, LoadedPolicy, PolicyConfig,
    PolicyS3Config, S3Outcome, Status, Target,
};
pub use ef_backup_core::model::{BackupKind, Event, EventKind, NameInfo, Notification};
use ef_backup_core::policy::{validate_cron, validate_name};
pub use ef_backup_core::policy::{Policy, PolicyError};
use ef_backup_core::util::{hex, lock};

/// The WIT package versions this host can run, each released and frozen.
pub const ACCEPTED_VERSIONS: &[&str] = &[v0_1::VERSION, v0_2::VERSION];

/// Export name of the policy interface, without the version.
const POLICY_INTERFACE: &str = "euraflow:backup/policy";

/// Recognising a listing (one parse-name per name) may take this long in total, plus
/// [`RECOGNISE_PER_NAME`] for each name: a guest that hangs on one name costs at most the base,
/// and the others still get their share.
pub const RECOGNISE_BASE: Duration = Duration::from_secs(1);
pub const RECOGNISE_PER_NAME: Duration = Duration::from_millis(10);
/// Names whose parse-name failure was already logged are remembered up to this many.
const WARNED_NAMES_MAX: usize = 10_000;
/// Messages one event may send (5 channels, a few each).
const MAX_NOTIFICATIONS: usize = 20;
/// What identifies a loaded policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// The `euraflow:backup` package version the component implements.
    pub wit_version: String,
    pub size_bytes: u64,
}

/// A loaded, linked and version-checked policy component. Each call runs in a fresh instance:
/// nothing carries over between calls, and a trap cannot poison later ones.
pub struct WasmPolicy {
    pre: Pre,
    info: PolicyInfo,
    label: Arc<str>,
    /// Names parse-name failed on, so each is logged once and not on every listing.
    warned_names: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy").field("info", &self.info).finish()
    }
}

/// The version of `euraflow:backup/policy` a component exports, or every export name when it
/// exports none.
fn exported_version(engine: &Engine, component: &Component) -> Result<String, Vec<String>> {
    let ty = component.component_type();
    let names: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    names.iter().find_map(|n| n.strip_prefix(POLICY_INTERFACE)?.strip_prefix('@').map(str::to_string)).ok_or(names)
}

impl WasmPolicy {
    pub fn load(path: &Path) -> Result<WasmPolicy, PolicyError> {
        WasmPolicy::load_cached(path, None)
    }

    /// Like [`WasmPolicy::load`], reusing the machine code compiled for the same file by an
    /// earlier start (in `cache_dir`, keyed by the file's SHA-256 and this build), so start-up
    /// and reload skip Cranelift. The cache directory must be trusted: its files are loaded
    /// as native code.
    pub fn load_cached(path: &Path, cache_dir: Option<&Path>) -> Result<WasmPolicy, PolicyError> {
        let bytes = std::fs::read(path).map_err(|err| PolicyError::Read { path: path.to_path_buf(), err })?;
        WasmPolicy::compile(path, &bytes, cache_dir)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<WasmPolicy, PolicyError> {
        WasmPolicy::compile(path, bytes, None)
    }

    fn compile(path: &Path, bytes: &[u8], cache_dir: Option<&Path>) -> Result<WasmPolicy, PolicyError> {
        let p = || path.to_path_buf();
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            let magic = hex(&bytes[..bytes.len().min(8)]);
            return Err(PolicyError::NotWasm {
                path: p(),
                magic: if magic.is_empty() { "nothing (empty file)".into() } else { format!("0x{magic}") },
            });
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(PolicyError::CoreModule { path: p() });
        }
        let engine = engine();
        let sha256 = hex(&Sha256::digest(bytes));
        let cached = cache_dir.filter(|d| private_dir(d)).map(|d| d.join(format!("{sha256}-ef-backup-{}.cwasm", env!("CARGO_PKG_VERSION"))));
        // SAFETY: the file was written by `serialize` of this very build (the name carries the
        // source's hash and our version) into a directory only this user can write; wasmtime
        // also refuses artifacts of another engine configuration.
        let from_cache = cached.as_ref().filter(|c| c.is_file()).and_then(|c| unsafe { Component::deserialize_file(engine, c) }.ok());
        let component = match from_cache {
            Some(c) => c,
            None => {
                let c = Component::new(engine, bytes).map_err(|e| PolicyError::Invalid { path: p(), reason: format!("{e:#}") })?;
                if let Some(file) = &cached {
                    if let Err(e) = store_artifact(file, &c) {
                        tracing::debug!("not caching the compiled policy in {}: {e}", file.display());
                    }
                }
                c
            }
        };
        let wit_version = match exported_version(engine, &component) {
            Ok(v) if ACCEPTED_VERSIONS.contains(&v.as_str()) => v,
            Ok(found) => return Err(PolicyError::Version { path: p(), found, accepted: ACCEPTED_VERSIONS.join(", ") }),
            Err(names) => {
                let exports = if names.is_empty() { "nothing".to_string() } else { names.join(", ") };
                return Err(PolicyError::NotAPolicy { path: p(), exports });
            }
        };
        let mut linker = Linker::<State>::new(engine);
        // The component model's WASI adapter imports wasi:cli, wasi:io, wasi:filesystem... even
        // for pure functions; they are linked against an empty context (see `store`).
        let link_err = |e: wasmtime::Error| PolicyError::Link { path: p(), reason: format!("{e:#}") };
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_err)?;
        let pre = if wit_version == v0_2::VERSION {
            v0_2::World::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(link_err)?;
            Pre::V02(linker.instantiate_pre(&component).and_then(v0_2::WorldPre::new).map_err(link_err)?)
        } else {
            v0_1::World::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(link_err)?;
            Pre::V01(linker.instantiate_pre(&component).and_then(v0_1::WorldPre::new).map_err(link_err)?)
        };
        let info = PolicyInfo { path: p(), sha256, wit_version, size_bytes: bytes.len() as u64 };
        let label: Arc<str> = path.display().to_string().into();
        Ok(WasmPolicy { pre, info, label, warned_names: Mutex::new(HashSet::new()) })
    }

    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// Runs `f` on a fresh instance; instantiation and every export `f` calls share one
    /// [`CALL_TIMEOUT`].
    fn call<R>(&self, call: &'static str, f: impl FnOnce(&Instance, &mut Store<State>) -> wasmtime::Result<R>) -> Result<R, PolicyError> {
        self.call_within(call, CALL_TIMEOUT, f)
    }

    /// [`WasmPolicy::call`] with another time budget. Both halves of the deadline take it: the
    /// epoch deadline (guest code) and the deadline of [`run_until`] (waits in WASI imports).
    fn call_within<R>(
        &self,
        call: &'static str,
        limit: Duration,
        f: impl FnOnce(&Instance, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        let mut store = new_store(self.pre.engine(), self.label.clone(), limit);
        let deadline = Instant::now() + limit;
        let result = run_until(deadline, self.pre.instantiate_async(&mut store)).and_then(|exports| f(&Instance { exports, deadline }, &mut store));
        let errors = std::mem::take(&mut store.data_mut().errors);
        ERROR_LOGS.with_borrow_mut(|collected| {
            if let Some(collected) = collected {
                collected.extend(errors);
            }
        });
        result.map_err(|e| call_error(&self.info.path, call, limit, e))
    }

    /// Runs `f` and returns, with its result, the error-level messages the policy logged in the
    /// calls `f` made: how `policy check` learns that the policy refuses its settings (WIT 0.1.0
    /// has no other channel for that). Per thread, as the calls run on the caller's thread:
    /// calls of other threads, a concurrent check of the same policy included, do not mix in.
    fn collect_error_logs<R>(&self, f: impl FnOnce() -> R) -> (R, Vec<String>) {
        let outer = ERROR_LOGS.replace(Some(Vec::new()));
        let result = f();
        let errors = ERROR_LOGS.replace(outer).unwrap_or_default();
        (result, errors)
    }

    fn bad(&self, call: &'static str, reason: impl Into<String>) -> PolicyError {
        PolicyError::BadOutput { path: self.info.path.clone(), call, reason: reason.into() }
    }

    fn warn_unrecognisable(&self, name: &str, err: &PolicyError) {
        let mut warned = lock(&self.warned_names);
        if warned.contains(name) {
            return;
        }
        if warned.len() >= WARNED_NAMES_MAX {
            warned.clear();
        }
        warned.insert(name.to_string());
        tracing::warn!("{err} on the name {name:?}; that file is treated as not this policy's (not listed, counted or deleted)");
    }

    /// What to delete, as `policy check` judges it: only listed names the policy recognises,
    /// and never the newest backup (the newest recognised name not dated more than a day in
    /// the future). Any violation rejects the whole answer.
    pub fn select_expired(&self, backups: &[BackupEntry], now: i64, target: Target, config: &PolicyConfig) -> Result<Vec<String>, PolicyError> {
        let call = "select-expired";
        let ours = self.recognise(config, backups)?;
        let names: Vec<String> = self.select_expired_among(backups, &ours, now, target, config)?.into_iter().map(|(n, _)| n).collect();
        let newest = ours
            .iter()
            .filter(|(_, i)| i.run_at <= now.saturating_add(ef_backup_core::retention::FUTURE_SLACK_SECS))
            .max_by(|a, b| a.1.run_at.cmp(&b.1.run_at).then_with(|| a.0.name.cmp(&b.0.name)))
            .map(|(b, _)| b.name.as_str());
        if let Some(name) = names.iter().find(|n| Some(n.as_str()) == newest) {
            return Err(self.bad(call, format!("{name:?} is the newest backup, which must never be deleted")));
        }
        Ok(names)
    }

    fn validate_response(&self, call: &'static str, r: HttpResponse) -> Result<HttpResponse, PolicyError> {
        if !(200..=599).contains(&r.status) {
            return Err(self.bad(call, format!("HTTP status {} is outside 200-599", r.status)));
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&r.body) {
            return Err(self.bad(call, format!("body is not JSON ({e})")));
        }
        Ok(r)
    }
}

/// The component as the host's [`Policy`]: every call sandboxed and its answer validated.
impl Policy for WasmPolicy {
    /// What the status response says about this policy.
    fn loaded(&self) -> LoadedPolicy {
        LoadedPolicy { path: self.info.path.display().to_string(), sha256: self.info.sha256.clone(), wit_version: self.info.wit_version.clone() }
    }

    fn schedule(&self, config: &PolicyConfig) -> Result<BackupSchedule, PolicyError> {
        let s = self.call("schedule", |p, s| p.calls().schedule(s, config))?;
        if s.crons.is_empty() {
            return Err(self.bad("schedule", "no cron expressions"));
        }
        for cron in &s.crons {
            validate_cron(cron).map_err(|reason| self.bad("schedule", format!("cron {cron:?}: {reason}")))?;
        }
        if s.timezone.is_empty() || s.timezone.len() > 64 || s.timezone.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.bad("schedule", format!("{:?} is not an IANA time zone name", s.timezone)));
        }
        Ok(s)
    }

    fn name_file(&self, config: &PolicyConfig, file: &NameInfo) -> Result<String, PolicyError> {
        let name = self.call("backup-name", |p, s| p.calls().name_file(s, config, file))?;
        validate_name(&name).map_err(|reason| self.bad("backup-name", format!("{name:?}: {reason}")))?;
        // Restore and verify decode a backup by its name: it must say the format it is in.
        if !name.ends_with(config.format.suffix()) {
            return Err(
                self.bad("backup-name", format!("{name:?} does not end with {:?}, the suffix of the backups being written", config.format.suffix()))
            );
        }
        Ok(name)
    }

    /// 0.1.0 names one database's dumps only.
    fn names_globals(&self) -> bool {
        self.info.wit_version != v0_1::VERSION
    }

    fn parse_name(&self, config: &PolicyConfig, name: &str) -> Result<Option<NameInfo>, PolicyError> {
        self.call("parse-name", |p, s| p.calls().parse_name(s, config, name))
    }

    /// The names among `backups` that the policy recognises, with the time each name carries.
    ///
    /// Each name is judged on its own: a trap or a timeout on one name means "not recognised"
    /// (logged once per name) and the others still count, so one odd file cannot stop listing,
    /// counting or retention. The whole listing gets [`RECOGNISE_BASE`] plus
    /// [`RECOGNISE_PER_NAME`] per name; names left when it runs out are not recognised this time.
    /// Fails only when the policy cannot be instantiated at all.
    fn recognise(&self, config: &PolicyConfig, backups: &[BackupEntry]) -> Result<Vec<(BackupEntry, NameInfo)>, PolicyError> {
        let call = "parse-name";
        let budget = RECOGNISE_BASE + RECOGNISE_PER_NAME * backups.len().min(u32::MAX as usize) as u32;
        let deadline = Instant::now() + budget;
        // One instance for the whole listing (a call per file would instantiate per file); a
        // trapped instance cannot be entered again, so a trap means a fresh one for the next name.
        let mut session: Option<(Store<State>, World)> = None;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (i, b) in backups.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "policy {}: parse-name used up its time budget of {budget:?} after {i} of {} names; the other {} are not \
                     recognised this time (not listed, counted or deleted). Is the policy slow on every name?",
                    self.label,
                    backups.len(),
                    backups.len() - i
                );
                break;
            }
            // Each name gets at most one call's time, waits in WASI imports included.
            let limit = left.min(CALL_TIMEOUT);
            let name_deadline = Instant::now() + limit;
            let (store, exports) = match &mut session {
                Some(s) => s,
                None => {
                    let mut store = new_store(self.pre.engine(), self.label.clone(), limit);
                    let exports =
                        run_until(name_deadline, self.pre.instantiate_async(&mut store)).map_err(|e| call_error(&self.info.path, call, limit, e))?;
                    session.insert((store, exports))
                }
            };
            store.set_epoch_deadline((limit.as_millis().div_ceil(EPOCH_TICK.as_millis())).max(1) as u64);
            let parsed = Calls::new(exports, name_deadline).parse_name(&mut *store, config, &b.name);
            errors.append(&mut store.data_mut().errors);
            match parsed {
                Ok(Some(info)) => out.push((b.clone(), info)),
                Ok(None) => {}
                Err(e) => {
                    self.warn_unrecognisable(&b.name, &call_error(&self.info.path, call, limit, e));
                    session = None;
                }
            }
        }
        ERROR_LOGS.with_borrow_mut(|collected| {
            if let Some(collected) = collected {
                collected.extend(errors);
            }
        });
        Ok(out)
    }

    /// The policy's selection among a listing already recognised ([`WasmPolicy::recognise`]),
    /// for retention. A name that is not listed or not recognised rejects the whole answer
    /// (the policy is confused; the caller skips retention rather than guess). Which of the
    /// selected names may really go is the host's call (`retention::Guard`), so a selected
    /// newest backup is kept there without throwing the rest of the answer away.
    fn select_expired_among(
        &self,
        backups: &[BackupEntry],
        ours: &[(BackupEntry, NameInfo)],
        now: i64,
        target: Target,
        config: &PolicyConfig,
    ) -> Result<Vec<(String, Option<String>)>, PolicyError> {
        let call = "select-expired";
        let names = self.call(call, |p, s| p.calls().select_expired(&mut *s, backups, ours, now, target, config))?;
        let mut out: Vec<(String, Option<String>)> = Vec::with_capacity(names.len());
        for (name, reason) in names {
            if !backups.iter().any(|b| b.name == name) {
                return Err(self.bad(call, format!("{name:?} is not in the listing it was given")));
            }
            if !ours.iter().any(|(b, _)| b.name == name) {
                return Err(self.bad(call, format!("{name:?} is not a name the policy produces (parse-name rejects it)")));
            }
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, reason));
            }
        }
        Ok(out)
    }

    /// The messages the policy shapes for an event; None for a 0.1.0 policy, which cannot.
    fn shape_notification(&self, config: &PolicyConfig, now: i64, event: &Event) -> Result<Option<Vec<Notification>>, PolicyError> {
        let messages = self.call("shape-notification", |p, s| p.calls().shape_notification(s, config, now, event))?;
        let Some(messages) = messages else { return Ok(None) };
        // A policy that floods channels would get the deployment's webhooks rate-limited.
        if messages.len() > MAX_NOTIFICATIONS {
            return Err(self.bad("shape-notification", format!("{} messages for one event (at most {MAX_NOTIFICATIONS})", messages.len())));
        }
        for m in &messages {
            if m.subject.trim().is_empty() {
                return Err(self.bad("shape-notification", "a message has an empty subject"));
            }
            if m.subject.chars().any(char::is_control) {
                return Err(self.bad("shape-notification", "a subject holds a control character"));
            }
            if m.subject.len() > 1_000 || m.body.len() > 64_000 {
                return Err(self.bad("shape-notification", "a message is longer than 1000 bytes of subject or 64000 of body"));
            }
        }
        Ok(Some(messages))
    }

    /// The names the policy picks for a drill; None for a 0.1.0 policy, which cannot.
    fn select_drill(&self, config: &PolicyConfig, now: i64, ours: &[(BackupEntry, NameInfo)]) -> Result<Option<Vec<String>>, PolicyError> {
        let names = self.call("select-drill", |p, s| p.calls().select_drill(s, config, now, ours))?;
        let Some(names) = names else { return Ok(None) };
        let mut picked: Vec<String> = Vec::new();
        for name in names {
            if !ours.iter().any(|(b, _)| b.name == name) {
                return Err(self.bad("select-drill", format!("{name:?} is not among the backups it was given")));
            }
            if !picked.contains(&name) {
                picked.push(name);
            }
        }
        Ok(Some(picked))
    }

    fn shape_backup_response(&self, outcome: &BackupOutcome) -> Result<HttpResponse, PolicyError> {
        let r = self.call("shape-backup-response", |p, s| p.calls().shape_backup_response(s, outcome))?;
        self.validate_response("shape-backup-response", r)
    }

    fn shape_status(&self, status: &Status) -> Result<HttpResponse, PolicyError> {
        let r = self.call("shape-status", |p, s| p.calls().shape_status(s, status))?;
        self.validate_response("shape-status", r)
    }
}

/// Where the policy comes from when none is configured: `ef_backup_policy.wasm` beside the
/// binary (an installed copy), else the component this source tree builds.
pub fn default_policy_path() -> PathBuf {
    const FILE: &str = "ef_backup_policy.wasm";
    if let Some(beside) = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(FILE))) {
        if beside.is_file() {
            return beside;
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm/wasm32-wasip2/wasm-release").join(FILE);
    built.canonicalize().unwrap_or(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_wasm_inputs_are_refused_before_compiling() {
        let p = Path::new("x.wasm");
        assert!(matches!(WasmPolicy::from_bytes(p, b""), Err(PolicyError::NotWasm { .. })));
        assert!(matches!(WasmPolicy::from_bytes(p, b"hello world, not wasm"), Err(PolicyError::NotWasm { .. })));
        assert!(matches!(WasmPolicy::from_bytes(p, b"\0asm\x01\0\0\0"), Err(PolicyError::CoreModule { .. })));
        let e = WasmPolicy::from_bytes(p, b"\0asm\x0d\0\x01\0\x07").unwrap_err();
        assert!(matches!(e, PolicyError::Invalid { .. }), "{e}");
    }
}

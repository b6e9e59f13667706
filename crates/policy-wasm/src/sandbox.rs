//! The sandbox a policy call runs in: one engine with an epoch ticker, a store per call with an
//! empty WASI context (no files, no network, no environment, frozen clocks), memory, table and
//! handle limits summed over the whole store, a deadline that covers guest code and waits in
//! WASI imports alike, and the one import the host gives (`log`), escaped and bounded.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ef_backup_core::policy::{escape_log, PolicyError};
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::Level;

/// Per-call limits. Generous for a policy (the default one needs about 1 MiB and well under a
/// millisecond), small enough that a runaway guest cannot hurt the host. The memory limit is
/// the sum over every linear memory of the call's store (a component may have several), the
/// time limit covers guest code (epoch deadline) and waits in WASI imports alike.
pub const MEMORY_LIMIT: usize = 64 << 20;
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Table elements summed over all tables of a call's store.
pub(crate) const TABLE_ELEMENTS_LIMIT: usize = 1 << 16;
/// Host handles (streams, pollables...) a call may hold at once; the default policy needs a few.
pub const RESOURCE_LIMIT: usize = 1024;
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Log lines a single call may emit; more are dropped (a guest must not flood the host's log).
pub(crate) const LOG_LINES_PER_CALL: u32 = 100;
pub(crate) const LOG_LINE_MAX: usize = 4096;

/// The call-level errors (as opposed to load errors).
pub(crate) fn call_error(path: &Path, call: &'static str, limit: Duration, err: wasmtime::Error) -> PolicyError {
    let path = path.to_path_buf();
    if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return PolicyError::Timeout { path, call, limit };
    }
    // The root cause names the trap ("wasm `unreachable` instruction executed": a panic,
    // or the memory limit); the outer layers are a wasm backtrace.
    let reason = match err.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}"),
        None => err.root_cause().to_string(),
    };
    let mut reason = reason.lines().next().unwrap_or_default().to_string();
    if let Some(limit) = err.chain().find_map(|e| e.downcast_ref::<LimitExceeded>()) {
        reason = limit.to_string();
    } else if matches!(err.chain().find_map(|e| e.downcast_ref::<ResourceTableError>()), Some(ResourceTableError::Full)) {
        reason = format!("it held more than {RESOURCE_LIMIT} host handles (streams, pollables...) at once");
    }
    PolicyError::Trap { path, call, reason }
}

pub(crate) struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: Limits,
    pub(crate) label: Arc<str>,
    pub(crate) log_lines: u32,
    /// The error-level log messages of this call (see [`WasmPolicy::collect_error_logs`]).
    pub(crate) errors: Vec<String>,
}

/// A limit of [`Limits`] a guest ran into; the trap's cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LimitExceeded {
    #[error("it exceeded the memory limit of {} MiB summed over all its memories (it asked for {} MiB)", MEMORY_LIMIT >> 20, .0 >> 20)]
    Memory(usize),
    #[error("it exceeded the limit of {TABLE_ELEMENTS_LIMIT} table elements summed over all its tables")]
    Table,
}

/// Limits what the whole store of a call holds. wasmtime's `StoreLimits` bounds each memory
/// and table on its own, so a component with 16 core instances could take 16 × the limit.
#[derive(Default)]
pub(crate) struct Limits {
    memory_bytes: usize,
    table_elements: usize,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // `current` is already counted: creating a memory is growing it from 0.
        let total = self.memory_bytes.saturating_sub(current).saturating_add(desired);
        if total > MEMORY_LIMIT {
            return Err(LimitExceeded::Memory(total).into());
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_sub(current).saturating_add(desired);
        if total > TABLE_ELEMENTS_LIMIT {
            return Err(LimitExceeded::Table.into());
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl State {
    /// A line the policy logs (the `log` import of every contract version).
    pub(crate) fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            return;
        }
        let mut message = message;
        if message.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let message = escape_log(&message);
        if matches!(level, Level::Error) {
            self.errors.push(message.clone());
        }
        let policy = &*self.label;
        match level {
            Level::Trace => tracing::trace!(target: "policy", policy, "{message}"),
            Level::Debug => tracing::debug!(target: "policy", policy, "{message}"),
            Level::Info => tracing::info!(target: "policy", policy, "{message}"),
            Level::Warn => tracing::warn!(target: "policy", policy, "{message}"),
            Level::Error => tracing::error!(target: "policy", policy, "{message}"),
        }
    }
}

/// A clock stuck at the Unix epoch: the guest must take time from its arguments.
pub(crate) struct FrozenClock;
impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}
impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// One engine per process, with a thread that advances its epoch for the per-call deadlines.
pub(crate) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&cfg).expect("the wasmtime configuration is valid");
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            })
            .expect("spawn the epoch thread");
        engine
    })
}

/// The timers and I/O of WASI imports (a guest's sleep is a tokio timer), driven by a thread
/// of its own, so a policy call works from any thread: plain, blocking pool or async worker.
pub(crate) fn wasi_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("policy-wasi")
            .enable_all()
            .build()
            .expect("start the policy's WASI runtime")
    })
}

/// Runs `call` on this thread until it finishes or `deadline` passes. Past the deadline the
/// call is dropped wherever it waits, in guest code (the epoch deadline traps it first) or in
/// a WASI import, and it fails with [`Trap::Interrupt`], as an epoch timeout does.
pub(crate) fn run_until<R>(deadline: Instant, call: impl Future<Output = wasmtime::Result<R>>) -> wasmtime::Result<R> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let _runtime = wasi_runtime().enter();
    let mut bounded = std::pin::pin!(tokio::time::timeout_at(deadline.into(), call));
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match bounded.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(result)) => return result,
            Poll::Ready(Err(_elapsed)) => return Err(Trap::Interrupt.into()),
            Poll::Pending => std::thread::park(),
        }
    }
}

/// A store with the sandbox's limits: an empty WASI context with frozen clocks, [`Limits`], a
/// bounded resource table and an epoch deadline `limit` from now.
pub(crate) fn new_store(engine: &Engine, label: Arc<str>, limit: Duration) -> Store<State> {
    let wasi = wasmtime_wasi::WasiCtxBuilder::new().wall_clock(FrozenClock).monotonic_clock(FrozenClock).allow_tcp(false).allow_udp(false).build();
    let mut table = ResourceTable::new();
    table.set_max_capacity(RESOURCE_LIMIT);
    let state = State { wasi, table, limits: Limits::default(), label, log_lines: 0, errors: Vec::new() };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline((limit.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64);
    store.epoch_deadline_trap();
    store
}

thread_local! {
    /// While [`WasmPolicy::collect_error_logs`] runs on this thread: what the calls logged as errors.
    pub(crate) static ERROR_LOGS: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Linker};

    use super::*;

    /// Instantiates a component made of core instances of `modules` in a store with the
    /// sandbox's limits.
    fn instantiate(modules: &[&str]) -> Result<(), PolicyError> {
        // `$fixed` holds 30 MiB from the start; `$grows` starts at 64 KiB and grows by 30 MiB
        // in its start function, i.e. while running.
        let mut wat = String::from(
            "(component
               (core module $fixed (memory 480))
               (core module $grows (memory 1) (func $grow (drop (memory.grow (i32.const 480)))) (start $grow))",
        );
        for m in modules {
            wat.push_str(&format!(" (core instance (instantiate ${m}))"));
        }
        wat.push(')');
        let component = Component::new(engine(), wat::parse_str(&wat).unwrap()).unwrap();
        let mut store = new_store(engine(), "sample.wasm".into(), CALL_TIMEOUT);
        let linker = Linker::<State>::new(engine());
        run_until(Instant::now() + CALL_TIMEOUT, linker.instantiate_async(&mut store, &component))
            .map(drop)
            .map_err(|e| call_error(Path::new("sample.wasm"), "instantiate", CALL_TIMEOUT, e))
    }

    /// Pins issue 12 item 15: 64 MiB per call in total, over all the memories of a component
    /// (wasmtime's `StoreLimits` allowed 64 MiB for each of 16 memories).
    #[test]
    fn memory_limit_is_the_sum_over_all_memories() {
        instantiate(&["fixed", "grows"]).expect("60 MiB in two memories is within 64 MiB");
        for over in [&["fixed", "fixed", "fixed"][..], &["fixed", "fixed", "grows"], &["grows", "grows", "grows"]] {
            let err = instantiate(over).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, PolicyError::Trap { .. }), "{over:?}: {text}");
            assert!(text.contains("exceeded the memory limit of 64 MiB summed over all its memories"), "{over:?}: {text}");
        }
    }

    /// Pins issue 12 (guest log lines cannot forge log lines): control characters of a
    /// guest's message are escaped, so one `log` call is one line of the host's log.
    /// Pins issue 12 item 15: a guest's sleep in a WASI import ends with the call's deadline
    /// (the epoch deadline only interrupts guest code).
    #[test]
    fn a_wait_in_the_host_ends_at_the_deadline() {
        let never = std::future::pending::<wasmtime::Result<()>>();
        let err = run_until(Instant::now() + Duration::from_millis(50), never).unwrap_err();
        assert!(matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)), "{err}");
        // From inside a tokio runtime too, where the callers' blocking threads live.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(async { run_until(Instant::now() + Duration::from_millis(50), std::future::pending::<wasmtime::Result<()>>()) });
        assert!(matches!(err.unwrap_err().downcast_ref::<Trap>(), Some(Trap::Interrupt)));
    }
}

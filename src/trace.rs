//! Op tracing: with `XPU_OPS_TRACE=file.json` (or [`set_trace_file`]) every op
//! call is appended to `file.json` as a Chrome / Perfetto trace event: name,
//! argument shapes and dtypes, thread count, start and duration. Off by
//! default; when off, [`op`] costs one relaxed atomic load.
//!
//! Events are written as they finish, one per line of a JSON array. Stopping
//! or replacing the trace ([`set_trace_file`]) writes the closing bracket, so
//! the file is plain JSON; a process that ends while tracing leaves it off,
//! which the trace-event format allows, so a trace survives a crash.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::error::{bail, Result};
use crate::tensor::Layout;

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// The open trace file and whether an event was written (for the separators).
struct Sink {
    w: BufWriter<File>,
    any_event: bool,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn open(path: &Path) -> Result<Sink> {
    match File::create(path) {
        Ok(f) => {
            let mut w = BufWriter::new(f);
            let _ = w.write_all(b"[\n");
            Ok(Sink {
                w,
                any_event: false,
            })
        }
        Err(e) => bail!(
            InvalidArgument,
            "cannot create trace file {}: {e}",
            path.display()
        ),
    }
}

fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
            if STATE.load(Ordering::Relaxed) == UNKNOWN {
                let from_env = std::env::var_os("XPU_OPS_TRACE").filter(|p| !p.is_empty());
                *sink = from_env.and_then(|p| open(Path::new(&p)).ok());
                STATE.store(if sink.is_some() { ON } else { OFF }, Ordering::Relaxed);
            }
            sink.is_some()
        }
    }
}

/// Starts tracing into `path` (replacing any current trace), or stops with `None`.
pub fn set_trace_file(path: Option<&Path>) -> Result<()> {
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(old) = sink.as_mut() {
        let _ = old.w.write_all(b"\n]\n").and_then(|_| old.w.flush());
    }
    *sink = path.map(open).transpose()?;
    STATE.store(if sink.is_some() { ON } else { OFF }, Ordering::Relaxed);
    Ok(())
}

/// An op call being traced; the event is written when it drops.
pub struct Span {
    name: &'static str,
    args: String,
    start: Instant,
}

/// Begins tracing op `name` with its tensor arguments; `None` when tracing is off.
pub fn op(name: &'static str, tensors: &[(&str, &Layout)]) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let mut args = String::new();
    for (i, (arg, t)) in tensors.iter().enumerate() {
        if i > 0 {
            args.push(',');
        }
        args.push_str(&format!("\"{arg}\":\"{}{:?}\"", t.dtype, t.shape));
    }
    Some(Span {
        name,
        args,
        start: Instant::now(),
    })
}

impl Drop for Span {
    fn drop(&mut self) {
        let ts = self.start.duration_since(epoch()).as_secs_f64() * 1e6;
        let dur = self.start.elapsed().as_secs_f64() * 1e6;
        let tid = thread_id();
        let line = format!(
            "{{\"name\":\"{}\",\"cat\":\"op\",\"ph\":\"X\",\"ts\":{ts:.3},\"dur\":{dur:.3},\"pid\":{},\"tid\":{tid},\"args\":{{{},\"threads\":{},\"isa\":\"{}\"}}}}",
            self.name,
            std::process::id(),
            self.args,
            crate::threading::num_threads(),
            crate::platform::active_isa(),
        );
        let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(out) = sink.as_mut() {
            let sep: &[u8] = if out.any_event { b",\n" } else { b"" };
            out.any_event = true;
            let _ = out
                .w
                .write_all(sep)
                .and_then(|_| out.w.write_all(line.as_bytes()))
                .and_then(|_| out.w.flush());
        }
    }
}

fn thread_id() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    ID.with(|id| *id)
}

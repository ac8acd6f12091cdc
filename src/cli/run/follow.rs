//! Following one task live: its events printed until it ends, and what a
//! Ctrl-C does meanwhile (cancel after a window, or detach).

use std::time::Duration;

use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use uuid::Uuid;

use crate::cli::client::{Event, Ws};
use crate::cli::output::TaskPrinter;
use crate::cli::{CliError, exit, exit_for_state};

/// How long after a first Ctrl-C `run` (and `console`) waits before
/// cancelling the task: a second Ctrl-C within it detaches instead and
/// leaves the task running. `SWITCHBOARD_CTRL_C_WINDOW_MS` overrides it.
const CTRL_C_WINDOW: Duration = Duration::from_millis(1000);

/// The Ctrl-C window in force.
fn ctrl_c_window() -> Duration {
    std::env::var("SWITCHBOARD_CTRL_C_WINDOW_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(CTRL_C_WINDOW)
}

/// A SIGINT listener. Unlike `tokio::signal::ctrl_c()` it queues a signal
/// that arrives while nobody is waiting.
pub fn interrupts() -> Result<Signal, CliError> {
    signal(SignalKind::interrupt())
        .map_err(|e| CliError::Other(format!("cannot handle Ctrl-C: {e}")))
}

/// What the first Ctrl-C does while following a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnInterrupt {
    /// Cancel the task on the node once the Ctrl-C window has passed; a
    /// second Ctrl-C detaches (within the window: without cancelling).
    Cancel,
    /// Stop following; the task goes on.
    Detach,
}

/// How following a task ended.
pub enum Followed {
    /// It reached this terminal state.
    Ended(String),
    /// The user detached; it goes on.
    Detached,
    /// It is waiting for an approval (only when asked to stop there).
    Waiting,
}

/// Print the task's events until it ends; the exit code of `run`.
pub async fn follow(
    ws: &mut Ws,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    sigint: &mut Signal,
    on_interrupt: OnInterrupt,
) -> Result<u8, CliError> {
    match follow_until(ws, task_id, printer, sigint, on_interrupt, false).await? {
        Followed::Ended(state) => Ok(exit_for_state(&state)),
        Followed::Detached | Followed::Waiting => Ok(exit::INTERRUPTED),
    }
}

/// Where a Ctrl-C left a followed task.
#[derive(Debug, Clone, Copy)]
enum Interrupted {
    /// No Ctrl-C yet.
    No,
    /// One Ctrl-C: the task is cancelled at this instant unless another
    /// comes first.
    CancelAt(Instant),
    /// The cancel was sent.
    Cancelling,
}

/// Print the task's events until it ends, the user detaches, or (with
/// `stop_at_waiting`) it waits for an approval.
pub async fn follow_until(
    ws: &mut Ws,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    sigint: &mut Signal,
    on_interrupt: OnInterrupt,
    stop_at_waiting: bool,
) -> Result<Followed, CliError> {
    let mut interrupted = Interrupted::No;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let cancel_at = match interrupted {
            Interrupted::CancelAt(at) => Some(at),
            _ => None,
        };
        tokio::select! {
            event = ws.next_event() => {
                if let Some(end) = on_event(&event?, task_id, printer, stop_at_waiting) {
                    return Ok(end);
                }
            }
            _ = sigint.recv() => match (on_interrupt, interrupted) {
                (OnInterrupt::Cancel, Interrupted::No) => {
                    let window = ctrl_c_window();
                    interrupted = Interrupted::CancelAt(Instant::now() + window);
                    printer.dim_notice(&format!(
                        "cancelling the task in {:.1} s (Ctrl-C again to detach and leave it running)",
                        window.as_secs_f64()
                    ));
                }
                (_, Interrupted::Cancelling) => {
                    return Ok(detach(printer, task_id, "the cancel was sent"));
                }
                _ => return Ok(detach(printer, task_id, "the task goes on")),
            },
            _ = tokio::time::sleep_until(cancel_at.unwrap_or_else(Instant::now)), if cancel_at.is_some() => {
                interrupted = Interrupted::Cancelling;
                if let Some(end) = cancel(ws, task_id, printer, sigint).await? {
                    return Ok(end);
                }
            }
            _ = tick.tick(), if printer.wants_spinner() => printer.tick(),
        }
    }
}

/// Print an event of the followed task; how following ends, if it does.
fn on_event(
    event: &Event,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    stop_at_waiting: bool,
) -> Option<Followed> {
    if let Some(line) = crate::cli::watch::pruned_line(event) {
        // The followed task's own events are never pruned while it runs;
        // older ones of its stream were.
        printer.dim_notice(&line);
        return None;
    }
    if event.task_id != Some(task_id) {
        return None;
    }
    if let Some(state) = printer.event(event) {
        printer.finish();
        return Some(Followed::Ended(state));
    }
    if event.state() == Some("waiting") {
        if stop_at_waiting {
            printer.finish();
            return Some(Followed::Waiting);
        }
        printer.hint(&format!(
            "answer with: switchboard approve {task_id} (or deny {task_id})"
        ));
    }
    None
}

/// Send `task.cancel`; the task's final event follows on the stream. A
/// Ctrl-C while waiting for the reply detaches.
async fn cancel(
    ws: &mut Ws,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    sigint: &mut Signal,
) -> Result<Option<Followed>, CliError> {
    printer.dim_notice("cancelling the task (Ctrl-C again to detach)");
    tokio::select! {
        r = ws.call(json!({"op": "task.cancel", "task_id": task_id})) => match r {
            // Already over: its final event is on its way.
            Err(e) if e.code() == "invalid_transition" => Ok(None),
            Err(e) => Err(e),
            Ok(_) => Ok(None),
        },
        _ = sigint.recv() => Ok(Some(detach(printer, task_id, "the cancel was sent"))),
    }
}

/// Stop following, saying how to pick the task up again.
fn detach(printer: &mut TaskPrinter, task_id: Uuid, how: &str) -> Followed {
    printer.notice(&format!("detached; {how}: switchboard attach {task_id}"));
    Followed::Detached
}

//! `switchboard console`: a prompt with history where each line goes to the
//! chosen agent and is answered live over one resumable WebSocket session.
//!
//! Ctrl-C while a task runs cancels it (twice: back to the prompt, the task
//! goes on); at the prompt it clears the line; Ctrl-D or `/quit` leaves.
//! The line editor runs on its own thread so the socket keeps being read
//! (and its heartbeats answered) while the user types.

use std::sync::mpsc as std_mpsc;

use futures_util::FutureExt;
use rustyline::error::ReadlineError;
use serde_json::{Value, json};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::cli::client::{Http, Ws};
use crate::cli::config;
use crate::cli::output::{Out, Style, TaskPrinter};
use crate::cli::run::{Followed, OnInterrupt, build_params, follow_until, interrupts};
use crate::cli::tasks::task_rows;
use crate::cli::{CliError, Common, exit};

/// `console` arguments.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// The agent lines go to at first (`/agent NAME` changes it).
    #[arg(long, default_value = "echo")]
    pub agent: String,
    /// An agent param `KEY=VALUE` for every task; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub param: Vec<String>,
    /// Agent params for every task as one JSON object.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
}

const HELP: &str = "\
  any text          submit it to the current agent and stream the answer
  /agent NAME       switch agent (without NAME: show the current one)
  /agents           list agents
  /tasks            list your recent tasks
  /cancel [ID]      cancel a task (default: the last one)
  /approve [ID]     approve a waiting task and follow it
  /deny [ID]        deny a waiting task
  /help             this text
  /quit             leave (Ctrl-D too)";

/// What the line editor thread hands back.
enum Line {
    Text(String),
    Interrupted,
    Eof,
}

/// The line editor on its own thread: send a prompt, receive a line.
struct Editor {
    prompts: std_mpsc::Sender<String>,
    lines: mpsc::Receiver<Line>,
}

impl Editor {
    fn spawn() -> Result<Self, CliError> {
        let (prompt_tx, prompt_rx) = std_mpsc::channel::<String>();
        let (line_tx, line_rx) = mpsc::channel(1);
        let history = config::path()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("history")));
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| CliError::Other(format!("cannot start the line editor: {e}")))?;
        std::thread::spawn(move || {
            if let Some(h) = &history {
                let _ = editor.load_history(h);
            }
            for prompt in prompt_rx {
                let line = match editor.readline(&prompt) {
                    Ok(text) => {
                        if !text.trim().is_empty() {
                            let _ = editor.add_history_entry(text.as_str());
                            if let Some(h) = &history {
                                if let Some(dir) = h.parent() {
                                    let _ = std::fs::create_dir_all(dir);
                                }
                                let _ = editor.save_history(h);
                            }
                        }
                        Line::Text(text)
                    }
                    Err(ReadlineError::Interrupted) => Line::Interrupted,
                    Err(_) => Line::Eof,
                };
                if line_tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Editor {
            prompts: prompt_tx,
            lines: line_rx,
        })
    }

    /// Show `prompt` and wait for a line, reading the socket meanwhile.
    async fn read(&mut self, prompt: String, ws: &mut Ws) -> Result<Line, CliError> {
        if self.prompts.send(prompt).is_err() {
            return Ok(Line::Eof);
        }
        loop {
            tokio::select! {
                line = self.lines.recv() => return Ok(line.unwrap_or(Line::Eof)),
                // Events of tasks left running in the background are not
                // shown while the user types; `/tasks` shows where they are.
                event = ws.next_event() => {
                    if let Some(line) = crate::cli::watch::pruned_line(&event?) {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

struct Console {
    ws: Ws,
    out: Out,
    agent: String,
    params: serde_json::Map<String, Value>,
    last_task: Option<Uuid>,
    sigint: Signal,
}

/// `switchboard console`.
pub async fn console(common: &Common, args: ConsoleArgs, out: Out) -> Result<u8, CliError> {
    let target = config::resolve(common)?;
    let params = build_params(&args.param, args.params.as_deref())?;
    let sigint = interrupts()?;
    let user = Http::new(&target).user_id().await?;
    let ws = Ws::connect_reusing(&target, &user).await?;
    eprintln!(
        "Connected to {} as {}. Agent: {}. Type /help for commands.",
        out.paint_err(Style::Cyan, &target.url),
        out.paint_err(Style::Bold, &ws.hello().user_id),
        args.agent
    );
    let mut editor = Editor::spawn()?;
    let mut c = Console {
        ws,
        out,
        agent: args.agent,
        params,
        last_task: None,
        sigint,
    };
    loop {
        let prompt = format!("{}> ", c.agent);
        let line = match editor.read(prompt, &mut c.ws).await? {
            Line::Eof => break,
            Line::Interrupted => continue,
            Line::Text(t) => t,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let result = match line.strip_prefix('/') {
            Some(command) => match c.command(command).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => Err(e),
            },
            None => c.submit(line).await,
        };
        // An error answers the line; the console goes on unless the
        // connection itself is gone for good.
        if let Err(e) = result {
            eprintln!("{}", c.out.paint_err(Style::Red, &format!("error: {e}")));
            if matches!(e, CliError::Unreachable { .. } | CliError::Tls { .. })
                || e.code() == "unauthorized"
            {
                return Err(e);
            }
        }
    }
    c.ws.close().await;
    Ok(exit::OK)
}

impl Console {
    /// A `/command`; `Ok(false)` ends the console.
    async fn command(&mut self, command: &str) -> Result<bool, CliError> {
        let (name, rest) = command
            .split_once(char::is_whitespace)
            .map(|(n, r)| (n, r.trim()))
            .unwrap_or((command, ""));
        match name {
            "quit" | "exit" | "q" => return Ok(false),
            "help" | "?" => eprintln!("{HELP}"),
            "agent" if rest.is_empty() => eprintln!("agent: {}", self.agent),
            "agent" => {
                let agents = self.ws.call(json!({"op": "agents.list"})).await?;
                let known = agents
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["agent_type"] == rest);
                if known {
                    self.agent = rest.to_owned();
                    eprintln!("agent: {rest}");
                } else {
                    eprintln!(
                        "{}",
                        self.out
                            .paint_err(Style::Red, &format!("no agent `{rest}` (see /agents)"))
                    );
                }
            }
            "agents" => {
                let agents = self.ws.call(json!({"op": "agents.list"})).await?;
                for a in agents.as_array().into_iter().flatten() {
                    let mark = if a["agent_type"] == self.agent.as_str() {
                        "*"
                    } else {
                        " "
                    };
                    eprintln!(
                        "{mark} {} {}",
                        a["agent_type"].as_str().unwrap_or_default(),
                        self.out
                            .paint_err(Style::Dim, a["description"].as_str().unwrap_or_default())
                    );
                }
            }
            "tasks" => {
                let r = self
                    .ws
                    .call(json!({"op": "task.list", "limit": 10}))
                    .await?;
                self.out.table(
                    &["TASK", "STATE", "AGENT", "USER", "CREATED"],
                    &task_rows(&self.out, &r["tasks"]),
                );
            }
            "cancel" => {
                let id = self.task_arg(rest)?;
                let r = self
                    .ws
                    .call(json!({"op": "task.cancel", "task_id": id}))
                    .await?;
                eprintln!("{id} {}", r["state"].as_str().unwrap_or_default());
            }
            "approve" | "deny" => {
                let (id_text, input) = rest
                    .split_once(char::is_whitespace)
                    .map(|(a, b)| (a, Some(b.trim())))
                    .unwrap_or((rest, None));
                let id = self.task_arg(id_text)?;
                let mut op =
                    json!({"op": "task.respond", "task_id": id, "approve": name == "approve"});
                if let Some(i) = input {
                    op["input"] = json!(i);
                }
                let r = self.ws.call(op).await?;
                let state = r["state"].as_str().unwrap_or("running").to_owned();
                self.follow(id, &state).await?;
            }
            other => eprintln!("unknown command /{other}; /help lists them"),
        }
        Ok(true)
    }

    /// A task id argument, or the last task.
    fn task_arg(&self, arg: &str) -> Result<Uuid, CliError> {
        if arg.is_empty() {
            return self
                .last_task
                .ok_or_else(|| CliError::Usage("no task yet; give a task id".into()));
        }
        arg.parse()
            .map_err(|_| CliError::Usage(format!("`{arg}` is not a task id")))
    }

    /// Submit a line and follow the task.
    async fn submit(&mut self, prompt: &str) -> Result<(), CliError> {
        let mut op = json!({
            "op": "task.submit",
            "agent_type": self.agent,
            "prompt": prompt,
            "idempotency_key": Uuid::new_v4().to_string(),
        });
        if !self.params.is_empty() {
            op["params"] = Value::Object(self.params.clone());
        }
        let task = self.ws.submit(op).await?;
        let id: Uuid = task["task_id"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| CliError::Other(format!("unexpected submit reply: {task}")))?;
        self.last_task = Some(id);
        self.follow(id, "pending").await
    }

    /// Follow a task until it ends, waits, or the user detaches.
    async fn follow(&mut self, id: Uuid, state: &str) -> Result<(), CliError> {
        // A Ctrl-C typed at a non-terminal prompt must not cancel this task.
        while self.sigint.recv().now_or_never().is_some() {}
        let mut printer = TaskPrinter::new(self.out, state);
        let followed = follow_until(
            &mut self.ws,
            id,
            &mut printer,
            &mut self.sigint,
            OnInterrupt::Cancel,
            true,
        )
        .await?;
        if let Followed::Waiting = followed {
            eprintln!(
                "{}",
                self.out
                    .paint_err(Style::Yellow, "the task waits: /approve [input] or /deny")
            );
        }
        Ok(())
    }
}

//! One link to the node: connect, `hello` with the device proof, then
//! carry frames both ways until the link drops or the host stops.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::tasks::{Runner, status};
use super::{Ended, Host};
use crate::agent::Answer;
use crate::cli::CliError;
use crate::protocol::link::{
    HostFrame, LinkError, LinkHello, NodeFrame, UNTRUSTED_CODE, Welcome, close,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting, and the node's answer to `hello`, may take.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping host waits for the node to ack its last reports.
const BYE_TIMEOUT: Duration = Duration::from_secs(10);

/// `base` (`http(s)://host/prefix`) → `ws(s)://host/prefix/link`.
pub fn link_url(base: &str) -> String {
    let ws = crate::cli::client::ws_url(base);
    format!("{}/link", ws.trim_end_matches("/ws"))
}

/// Link once and serve until the link ends.
pub async fn session(host: &Host, runner: &Arc<Runner>, stop: &CancellationToken) -> Ended {
    let opened = tokio::select! {
        opened = open(host, runner) => opened,
        _ = stop.cancelled() => return Ended::Stopped,
    };
    let (mut socket, welcome) = match opened {
        Ok(ok) => ok,
        Err(ended) => return ended,
    };
    runner.resume(&welcome.resume);
    host.grace_ms
        .store(welcome.grace_ms, std::sync::atomic::Ordering::Relaxed);
    let offered: Vec<&str> = host.offers.iter().map(|o| o.agent_type.as_str()).collect();
    status(&format!(
        "linked to {} (node {}) as `{}`, user {}; offering {}{}",
        host.target.url,
        welcome.node_id,
        host.name,
        welcome.user_id,
        offered.join(", "),
        match welcome.resume.len() {
            0 => String::new(),
            n => format!("; resuming {n} task(s)"),
        }
    ));
    serve(&mut socket, runner, stop, &welcome).await
}

/// Connect and say hello; the welcome, or how it ended.
async fn open(host: &Host, runner: &Runner) -> Result<(Socket, Welcome), Ended> {
    let user_id = host.user_id().await.map_err(refused_or_retry)?;
    let proof = host
        .identity
        .prove(&host.http, &host.name, &user_id)
        .await
        .map_err(refused_or_retry)?;
    let connector = host
        .target
        .tls
        .clone()
        .map(tokio_tungstenite::Connector::Rustls);
    let url = link_url(&host.target.url);
    let connect = tokio_tungstenite::connect_async_tls_with_config(&url, None, false, connector);
    let (mut socket, _) = tokio::time::timeout(WELCOME_TIMEOUT, connect)
        .await
        .map_err(|_| Ended::Retry(format!("connecting to {url} timed out")))?
        .map_err(|e| refused_or_retry(CliError::unreachable(&host.target.url, &e)))?;
    let hello = HostFrame::Hello(LinkHello {
        token: Some(host.target.token.clone()),
        name: host.name.clone(),
        device_id: Some(host.identity.device_id.clone()),
        device_nonce: Some(proof.nonce),
        device_signature: Some(proof.signature),
        agents: host.offers.clone(),
        running: runner.running_ids(),
    });
    send(&mut socket, &hello).await?;
    let first = tokio::time::timeout(WELCOME_TIMEOUT, read(&mut socket))
        .await
        .map_err(|_| Ended::Retry("the node did not answer hello in time".into()))??;
    match first {
        NodeFrame::Welcome(w) => Ok((socket, w)),
        NodeFrame::Error { error, .. } => Err(refusal(error)),
        other => Err(Ended::Retry(format!("unexpected first frame: {other:?}"))),
    }
}

/// A refused `hello`: wait for approval, give up, or retry.
fn refusal(e: LinkError) -> Ended {
    match e.code.as_str() {
        UNTRUSTED_CODE => Ended::Untrusted(e.message),
        "unauthorized" | "forbidden" | "bad_request" => Ended::Fatal(CliError::Server {
            status: None,
            code: e.code,
            message: e.message,
            url: String::new(),
        }),
        _ => Ended::Retry(format!("{} ({})", e.message, e.code)),
    }
}

/// A REST error before the link: fatal unless waiting may help.
fn refused_or_retry(e: CliError) -> Ended {
    if e.is_transient() {
        Ended::Retry(e.to_string())
    } else {
        Ended::Fatal(e)
    }
}

async fn send(socket: &mut Socket, frame: &HostFrame) -> Result<(), Ended> {
    let text = serde_json::to_string(frame).map_err(|e| Ended::Retry(e.to_string()))?;
    socket
        .send(Message::text(text))
        .await
        .map_err(|e| Ended::Retry(format!("link lost: {e}")))
}

/// The next node frame (pings are answered by the library).
async fn read(socket: &mut Socket) -> Result<NodeFrame, Ended> {
    loop {
        let msg = match socket.next().await {
            None => return Err(Ended::Retry("the node closed the link".into())),
            Some(Err(e)) => return Err(Ended::Retry(format!("link lost: {e}"))),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => match serde_json::from_str(t.as_str()) {
                Ok(frame) => return Ok(frame),
                Err(e) => status(&format!("ignoring a frame the node sent: {e}")),
            },
            Message::Close(c) => {
                let (code, reason) = c
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(match code {
                    close::UNAUTHORIZED | close::FORBIDDEN => Ended::Fatal(CliError::Server {
                        status: None,
                        code: if code == close::UNAUTHORIZED {
                            "unauthorized".into()
                        } else {
                            "forbidden".into()
                        },
                        message: format!("the node closed the link: {reason}"),
                        url: String::new(),
                    }),
                    _ => Ended::Retry(format!("the node closed the link ({code} {reason})")),
                });
            }
            _ => continue,
        }
    }
}

/// Carry frames until the link ends or `stop` fires.
async fn serve(
    socket: &mut Socket,
    runner: &Arc<Runner>,
    stop: &CancellationToken,
    welcome: &Welcome,
) -> Ended {
    let period = Duration::from_millis(welcome.heartbeat_ms.max(10));
    let mut last_seen = Instant::now();
    let mut beat = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        let step = tokio::select! {
            _ = stop.cancelled() => return goodbye(socket, runner).await,
            _ = runner.wake.notified() => flush(socket, runner).await,
            frame = read(socket) => {
                last_seen = Instant::now();
                match frame {
                    Ok(f) => {
                        on_frame(runner, f);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            _ = beat.tick() => {
                if last_seen.elapsed() > 2 * period {
                    Err(Ended::Retry("the node stopped answering".into()))
                } else {
                    socket.send(Message::Ping(Default::default())).await
                        .map_err(|e| Ended::Retry(format!("link lost: {e}")))
                }
            }
        };
        if let Err(ended) = step {
            return ended;
        }
    }
}

/// Write every report not yet sent on this link.
async fn flush(socket: &mut Socket, runner: &Runner) -> Result<(), Ended> {
    for report in runner.to_send() {
        let text = serde_json::to_string(&HostFrame::Report(report))
            .map_err(|e| Ended::Retry(e.to_string()))?;
        socket
            .feed(Message::text(text))
            .await
            .map_err(|e| Ended::Retry(format!("link lost: {e}")))?;
    }
    socket
        .flush()
        .await
        .map_err(|e| Ended::Retry(format!("link lost: {e}")))
}

fn on_frame(runner: &Arc<Runner>, frame: NodeFrame) {
    match frame {
        NodeFrame::Run(run) => runner.start(run),
        NodeFrame::Cancel { task_id, reason } => runner.cancel(task_id, &reason),
        NodeFrame::Answer {
            task_id,
            approve,
            input,
        } => runner.answer(task_id, Answer { approve, input }),
        NodeFrame::Ack { task_id, n } => runner.ack(task_id, n),
        NodeFrame::Error { task_id, error } => status(&format!(
            "the node refused a frame{}: {} ({})",
            task_id
                .map(|t| format!(" about task {t}"))
                .unwrap_or_default(),
            error.message,
            error.code
        )),
        NodeFrame::Welcome(_) => {}
    }
}

/// Ctrl-C or SIGTERM while linked: report every running task failed, wait
/// (a little) for the node to store that, say `bye` and close.
async fn goodbye(socket: &mut Socket, runner: &Arc<Runner>) -> Ended {
    let n = runner.fail_all("the host was stopped while the task was running");
    status(&format!("stopping: reporting {n} running task(s) failed"));
    let acked = async {
        while !runner.is_empty() {
            flush(socket, runner).await?;
            if let frame @ NodeFrame::Ack { .. } = read(socket).await? {
                on_frame(runner, frame);
            }
        }
        Ok::<(), Ended>(())
    };
    if tokio::time::timeout(BYE_TIMEOUT, acked).await.is_err() {
        status("the node did not confirm every report in time");
    }
    let _ = send(socket, &HostFrame::Bye {}).await;
    let _ = socket.close(None).await;
    Ended::Stopped
}

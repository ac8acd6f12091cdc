//! Reading the node's frames off a socket.

use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::CliError;

/// Close codes after which reconnecting cannot help.
const CLOSE_UNAUTHORIZED: u16 = 4401;

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection stopped being usable.
pub(super) enum Lost {
    /// Closed or broken; worth reconnecting.
    Dropped(String),
    /// Closed in a way reconnecting cannot fix.
    Fatal(CliError),
}

/// Read the next JSON text frame.
pub(super) async fn read_frame(socket: &mut Socket) -> Result<Value, Lost> {
    loop {
        let msg = match socket.next().await {
            None => return Err(Lost::Dropped("connection closed".into())),
            Some(Err(e)) => return Err(Lost::Dropped(e.to_string())),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => {
                if let Ok(v) = serde_json::from_str(t.as_str()) {
                    return Ok(v);
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((u16::from(CloseCode::Status), String::new()));
                if code == CLOSE_UNAUTHORIZED {
                    return Err(Lost::Fatal(CliError::Server {
                        status: Some(401),
                        code: "unauthorized".into(),
                        message: format!("the node closed the connection: {reason}"),
                        url: String::new(),
                    }));
                }
                return Err(Lost::Dropped(format!(
                    "closed by the node: {code} {reason}"
                )));
            }
            _ => continue,
        }
    }
}

/// A reply's `result`, or its error.
pub(super) fn reply_result(reply: Value, url: &str) -> Result<Value, CliError> {
    if reply["ok"] == true {
        Ok(reply["result"].clone())
    } else {
        Err(CliError::from_body(None, &reply, url))
    }
}

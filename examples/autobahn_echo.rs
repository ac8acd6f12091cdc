//! An echo server on the node's own WebSocket layer, for the Autobahn
//! TestSuite: `cargo run --release --example autobahn_echo -- 127.0.0.1:9001`
//! serves with the node's production message limit (`[limits]
//! max_message_bytes`); `--large` raises it to 64 MiB, for the suite's
//! big-message cases. `.ci/autobahn` runs the suite against it twice.

use switchboard::config::Limits;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let max_message = match args.next().as_deref() {
        Some("--large") => 64 << 20,
        Some(other) => {
            eprintln!("usage: autobahn_echo ADDR [--large] (not `{other}`)");
            std::process::exit(2);
        }
        None => Limits::default().max_message_bytes,
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "autobahn_echo: echoing on ws://{} (messages up to {max_message} bytes)",
        listener.local_addr()?
    );
    switchboard::ws::echo::serve(listener, max_message).await;
    Ok(())
}

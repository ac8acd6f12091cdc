//! `switchboard login`: verify a token with `GET /api/me` and store it,
//! with the extra CA certificate file (`--ca-cert`) the node needs, if any.

use std::io::{BufRead, IsTerminal};

use serde_json::json;

use crate::cli::client::Http;
use crate::cli::config::{self, ClientConfig, ServerEntry, Target};
use crate::cli::output::{Out, Style, list};
use crate::cli::{CliError, Common, exit};

/// `login` flags (`--server` and `--token` are the global ones).
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The name to store the server under (default: its host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Make this the default server even when another one is.
    #[arg(long)]
    pub default: bool,
}

/// Store `--server URL` with a token from `--token`, `SWITCHBOARD_TOKEN`,
/// or a prompt (not echoed on a terminal; one line of stdin otherwise).
pub async fn login(common: &Common, args: LoginArgs, out: Out) -> Result<u8, CliError> {
    let server = common.server.as_deref().ok_or_else(|| {
        CliError::Usage("login needs --server URL (or SWITCHBOARD_SERVER)".into())
    })?;
    let path = config::path()?;
    let mut stored = ClientConfig::load(&path)?;
    // `--server NAME` of an already stored server re-logs into its URL.
    let (url, name) = if config::looks_like_url(server) {
        let url = config::normalize_url(server);
        let name = args.name.clone().unwrap_or_else(|| {
            stored
                .servers
                .iter()
                .find(|(_, e)| config::normalize_url(&e.url) == url)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| config::name_from_url(&url))
        });
        (url, name)
    } else {
        let (n, e) = stored.get(Some(server)).ok_or_else(|| {
            CliError::Usage(format!("`{server}` is neither a URL nor a stored server"))
        })?;
        (
            config::normalize_url(&e.url),
            args.name.clone().unwrap_or(n.to_owned()),
        )
    };
    // A new `--ca-cert` replaces the stored one; without it, logging in
    // again to the same URL keeps it.
    let ca_cert = match &common.ca_cert {
        Some(p) => Some(
            std::path::absolute(p)
                .map_err(|e| CliError::Usage(format!("--ca-cert {}: {e}", p.display())))?,
        ),
        None => stored
            .servers
            .get(&name)
            .filter(|e| config::normalize_url(&e.url) == url)
            .and_then(|e| e.ca_cert.clone()),
    };
    // Checked before the token is asked for: a bad file needs no token.
    let target = Target::new(url.clone(), String::new(), ca_cert.as_deref())?;
    let token = match common.token.clone().filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => prompt_token(&url)?,
    };
    let target = Target { token, ..target };
    let me = Http::new(&target).get("/api/me").await?;
    stored.servers.insert(
        name.clone(),
        ServerEntry {
            url: url.clone(),
            token: target.token.clone(),
            ca_cert: ca_cert.clone(),
        },
    );
    if args.default || stored.default.is_none() {
        stored.default = Some(name.clone());
    }
    stored.save(&path)?;
    if out.json {
        out.json_line(&json!({
            "server": name,
            "url": url,
            "user_id": me["user_id"],
            "roles": me["roles"],
            "default": stored.default.as_deref() == Some(name.as_str()),
            "config": path.display().to_string(),
            "ca_cert": ca_cert.as_ref().map(|p| p.display().to_string()),
        }));
    } else {
        println!(
            "Logged in to {} as {} ({}); saved as `{}` in {}",
            out.paint(Style::Cyan, &url),
            out.paint(Style::Bold, me["user_id"].as_str().unwrap_or("?")),
            list(&me, "roles"),
            name,
            path.display()
        );
        if let Some(ca) = &ca_cert {
            println!("Trusting the CA certificate(s) in {}", ca.display());
        }
    }
    Ok(exit::OK)
}

fn prompt_token(url: &str) -> Result<String, CliError> {
    let token = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("Token for {url}: "))
            .map_err(|e| CliError::Usage(format!("cannot read the token: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Usage(format!("cannot read the token from stdin: {e}")))?;
        line
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(CliError::Usage(
            "no token given: pass --token, set SWITCHBOARD_TOKEN, or type it at the prompt".into(),
        ));
    }
    Ok(token)
}

//! `switchboard login`: verify a token with `GET /api/me` and store it.

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
    let token = match common.token.clone().filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => prompt_token(&url)?,
    };
    let target = Target {
        url: url.clone(),
        token: token.clone(),
    };
    let me = Http::new(&target).get("/api/me").await?;
    stored.servers.insert(
        name.clone(),
        ServerEntry {
            url: url.clone(),
            token,
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

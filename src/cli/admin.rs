//! `switchboard user ...` and `switchboard device ...` over the admin REST
//! API (`admin:users`).

use serde_json::{Value, json};

use crate::cli::client::Http;
use crate::cli::config;
use crate::cli::output::{Out, Style, list, s, short_time};
use crate::cli::tasks::encode;
use crate::cli::{CliError, Common, exit};

/// `user` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user; prints their first token (shown once).
    Add {
        /// The user id, often an e-mail address.
        user_id: String,
        /// A role (admin, developer, viewer, guest); repeatable.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// List users with their roles and permissions.
    List,
    /// Add or remove a role.
    Role {
        /// The user.
        user_id: String,
        /// `add` or `remove`.
        action: RoleAction,
        /// The role.
        role: String,
    },
    /// Grant a permission on top of the user's roles.
    Grant {
        /// The user.
        user_id: String,
        /// The permission, e.g. `task:submit`.
        permission: String,
    },
    /// Take a permission away from the user's roles.
    Revoke {
        /// The user.
        user_id: String,
        /// The permission.
        permission: String,
    },
    /// Issue a new token (printed once), or revoke all of them.
    Token {
        /// The user.
        user_id: String,
        /// Revoke every token of the user instead; their sockets close.
        #[arg(long)]
        revoke_all: bool,
    },
}

/// `user role` actions.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleAction {
    /// Assign the role.
    Add,
    /// Remove the role.
    Remove,
}

/// `device` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// List devices (every user's; or one user's with --user).
    List {
        /// Only this user's devices.
        #[arg(long)]
        user: Option<String>,
    },
    /// Trust a pending device.
    Approve {
        /// The device id.
        device_id: String,
    },
    /// Revoke a device; its live sessions end.
    Revoke {
        /// The device id.
        device_id: String,
    },
}

fn http(common: &Common) -> Result<Http, CliError> {
    Ok(Http::new(&config::resolve(common)?))
}

/// Print a user record.
fn print_user(out: &Out, u: &Value) {
    if out.json {
        out.json_line(u);
        return;
    }
    println!(
        "{}  roles: {}",
        out.paint(Style::Bold, &s(u, "user_id")),
        list(u, "roles")
    );
    if u.get("permissions").is_some() {
        println!("  permissions: {}", list(u, "permissions"));
    }
    for (key, label) in [("grants", "granted"), ("revokes", "revoked")] {
        if u[key].as_array().is_some_and(|a| !a.is_empty()) {
            println!("  {label}: {}", list(u, key));
        }
    }
}

/// `switchboard user ...`.
pub async fn user(common: &Common, command: UserCommand, out: Out) -> Result<u8, CliError> {
    let http = http(common)?;
    match command {
        UserCommand::Add { user_id, roles } => {
            let created = http
                .post(
                    "/api/admin/users",
                    json!({"user_id": user_id, "roles": roles}),
                )
                .await?;
            if out.json {
                out.json_line(&created);
            } else {
                print_user(
                    &out,
                    &json!({"user_id": created["user_id"], "roles": created["roles"]}),
                );
                println!("  token: {}", s(&created, "token"));
                eprintln!(
                    "{}",
                    out.paint_err(
                        Style::Dim,
                        "the token is shown once; hand it to the user now"
                    )
                );
            }
        }
        UserCommand::List => {
            let users = http.get("/api/admin/users").await?;
            if out.json {
                out.json_line(&users);
            } else {
                let rows: Vec<Vec<String>> = users
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| {
                        let mut extra = Vec::new();
                        if u["grants"].as_array().is_some_and(|a| !a.is_empty()) {
                            extra.push(format!("+{}", list(u, "grants")));
                        }
                        if u["revokes"].as_array().is_some_and(|a| !a.is_empty()) {
                            extra.push(format!("-{}", list(u, "revokes")));
                        }
                        vec![s(u, "user_id"), list(u, "roles"), extra.join(" ")]
                    })
                    .collect();
                out.table(&["USER", "ROLES", "GRANTS/REVOKES"], &rows);
            }
        }
        UserCommand::Role {
            user_id,
            action,
            role,
        } => {
            let path = format!("/api/admin/users/{}/roles", encode(&user_id));
            let u = match action {
                RoleAction::Add => http.post(&path, json!({"role": role})).await?,
                RoleAction::Remove => http.delete(&format!("{path}/{}", encode(&role))).await?,
            };
            print_user(&out, &u);
        }
        UserCommand::Grant {
            user_id,
            permission,
        } => {
            let path = format!("/api/admin/users/{}/permissions", encode(&user_id));
            print_user(&out, &http.post(&path, json!({"grant": permission})).await?);
        }
        UserCommand::Revoke {
            user_id,
            permission,
        } => {
            let path = format!("/api/admin/users/{}/permissions", encode(&user_id));
            print_user(
                &out,
                &http.post(&path, json!({"revoke": permission})).await?,
            );
        }
        UserCommand::Token {
            user_id,
            revoke_all,
        } => {
            let path = format!("/api/admin/users/{}/tokens", encode(&user_id));
            if revoke_all {
                let r = http.delete(&path).await?;
                if out.json {
                    out.json_line(&r);
                } else {
                    println!("revoked {} token(s) of {user_id}", s(&r, "revoked"));
                }
            } else {
                let t = http.post(&path, json!({})).await?;
                if out.json {
                    out.json_line(&t);
                } else {
                    println!("{}", s(&t, "token"));
                }
            }
        }
    }
    Ok(exit::OK)
}

/// A 404 from a node without the devices API becomes a clear message.
fn unsupported(e: CliError, any_404: bool) -> CliError {
    match &e {
        CliError::Server {
            status: Some(404),
            message,
            url,
            ..
        } if any_404 || message.starts_with("no such endpoint") => CliError::Server {
            status: Some(404),
            code: "not_supported".into(),
            message: format!("this server ({url}) does not support devices"),
            url: url.clone(),
        },
        _ => e,
    }
}

/// `switchboard device ...`.
pub async fn device(common: &Common, command: DeviceCommand, out: Out) -> Result<u8, CliError> {
    let http = http(common)?;
    match command {
        DeviceCommand::List { user } => {
            let devices = http
                .get("/api/devices")
                .await
                .map_err(|e| unsupported(e, true))?;
            // `GET /api/devices` has no user filter (it lists everyone's
            // for admin:users, one's own otherwise): `--user` filters here.
            let items: Vec<Value> = devices
                .as_array()
                .or_else(|| devices["devices"].as_array())
                .into_iter()
                .flatten()
                .filter(|d| user.as_deref().is_none_or(|u| d["user_id"] == u))
                .cloned()
                .collect();
            if out.json {
                out.json_line(&Value::Array(items));
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|d| {
                    vec![
                        s(d, "device_id"),
                        s(d, "user_id"),
                        s(d, "state"),
                        s(d, "name"),
                        short_time(&s(d, "last_seen")),
                    ]
                })
                .collect();
            out.table(&["DEVICE", "USER", "STATE", "NAME", "LAST SEEN"], &rows);
        }
        DeviceCommand::Approve { device_id } => {
            device_action(&http, &out, &device_id, "approve").await?
        }
        DeviceCommand::Revoke { device_id } => {
            device_action(&http, &out, &device_id, "revoke").await?
        }
    }
    Ok(exit::OK)
}

/// `POST /api/devices/{id}/approve|revoke`.
async fn device_action(
    http: &Http,
    out: &Out,
    device_id: &str,
    verb: &str,
) -> Result<(), CliError> {
    let d = http
        .post(
            &format!("/api/devices/{}/{verb}", encode(device_id)),
            json!({}),
        )
        .await
        .map_err(|e| unsupported(e, false))?;
    if out.json {
        out.json_line(&d);
    } else {
        let done = if verb == "approve" {
            "trusted"
        } else {
            "revoked"
        };
        println!("{device_id} {}", d["state"].as_str().unwrap_or(done));
    }
    Ok(())
}

//! The config file's errors and redaction.

use super::*;

/// A bad field is reported with its line.
#[test]
fn errors_name_the_line() {
    let err =
        FileConfig::parse("[[agents]]\nname = \"x\"\nkind = \"echo\"\nbogus = 1\n").unwrap_err();
    assert!(err.to_string().contains("line 4"), "{err}");
    assert!(err.to_string().contains("bogus"), "{err}");
    let err = FileConfig::parse("[[agents]]\nname = \"x\"\nkind = \"magic\"\n").unwrap_err();
    assert!(err.to_string().contains("agents[0].kind"), "{err}");
}

fn err(text: &str) -> String {
    FileConfig::parse(text).unwrap_err().to_string()
}

/// Semantic errors name the line and the field path.
#[test]
fn semantic_errors_name_line_and_field() {
    let e = err(
        "[[agents]]\nname = \"a\"\nkind = \"echo\"\n\n[[agents]]\nname = \"b\"\nkind = \"command\"\ncommand = []\n",
    );
    assert!(e.contains("line 8: agents[1].command"), "{e}");
    let e = err("[[agents]]\nname = \"b\"\nkind = \"command\"\n");
    assert!(e.contains("line 1: agents[0].command"), "{e}");
    let e = err("[[agents]]\nname = \"b\"\nkind = \"command\"\ncommand = [\"x\"]\n");
    assert!(
        e.contains("agents[0].command") && e.contains("{prompt}"),
        "{e}"
    );
    let e = err("[[agents]]\nname = \"o\"\nkind = \"openai\"\nmodel = \"m\"\n");
    assert!(e.contains("agents[0].base_url: is required"), "{e}");
    let e = err(
        "[[agents]]\nname = \"o\"\nkind = \"ollama\"\nbase_url = \"localhost\"\nmodel = \"m\"\n",
    );
    assert!(e.contains("line 4: agents[0].base_url"), "{e}");
    let e = err("[[agents]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"http://h\"\n");
    assert!(e.contains("agents[0].model"), "{e}");
    let e = err("[[agents]]\nname = \"a\"\nkind = \"echo\"\nallowed_roles = [\"root\"]\n");
    assert!(
        e.contains("line 4: agents[0].allowed_roles") && e.contains("root"),
        "{e}"
    );
    let e = err("[[agents]]\nname = \"a\"\nkind = \"echo\"\nmax_concurrent = 0\n");
    assert!(e.contains("agents[0].max_concurrent"), "{e}");
    let e = err(
        "[[agents]]\nname = \"a\"\nkind = \"echo\"\n[[agents]]\nname = \"a\"\nkind = \"echo\"\n",
    );
    assert!(
        e.contains("line 5: agents[1].name") && e.contains("twice"),
        "{e}"
    );
}

/// Skills must name known agents and real permissions.
#[test]
fn skill_errors_name_line_and_field() {
    let e = err("[[skills]]\nskill_id = \"s\"\nname = \"S\"\nagents = [\"nobody\"]\n");
    assert!(
        e.contains("line 4: skills[0].agents") && e.contains("nobody"),
        "{e}"
    );
    let e = err(
        "[[skills]]\nskill_id = \"s\"\nname = \"S\"\nagents = [\"echo\", \"claude\"]\nrequired_permissions = [\"skill:fly\"]\n",
    );
    assert!(
        e.contains("line 5: skills[0].required_permissions") && e.contains("skill:fly"),
        "{e}"
    );
    let ok = FileConfig::parse(
        "[[agents]]\nname = \"c\"\nkind = \"command\"\ncommand = [\"cat\"]\nstdin = true\n[[skills]]\nskill_id = \"s\"\nname = \"S\"\nagents = [\"c\", \"echo\"]\nrequired_permissions = [\"skill:execute\"]\n",
    );
    assert!(ok.is_ok(), "{ok:?}");
}

/// Keys never reach logs.
#[test]
fn keys_are_redacted() {
    let cfg = FileConfig::parse("[[agents]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"http://h\"\nmodel = \"m\"\napi_key = \"sk-very-secret\"\n").unwrap();
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("sk-very-secret") && shown.contains("<redacted>"),
        "{shown}"
    );
}

/// Passwords never reach logs.
#[test]
fn urls_are_redacted() {
    assert_eq!(
        redact_url("postgres://u:secret@h/db"),
        "postgres://u:***@h/db"
    );
    assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
}

//! The command line: exit codes and messages a user sees.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::scratch;

fn evfs(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_envelopefs"))
        .args(args)
        .current_dir(cwd)
        .env_remove("ENVELOPEFS_PASSFILE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_status_passwd_and_their_errors() {
    let tmp = scratch();
    let d = tmp.path();
    std::fs::write(d.join("pass"), "first\n").unwrap();
    std::fs::write(d.join("pass2"), "second\n").unwrap();

    let o = evfs(&["init", "vol", "--passfile", "pass", "--extent-size", "64K"], d);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("64 KiB extents"));

    let o = evfs(&["init", "vol", "--passfile", "pass"], d);
    assert_eq!(code(&o), 18);
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));

    let o = evfs(&["status", "vol", "--json"], d);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cipher"], "aes-256-gcm-siv");
    assert_eq!(v["extent_size"], 65536);
    assert_eq!(v["volume_format"], 2, "a new GCM-SIV volume is format 2");
    assert_eq!(v["kms_uri"], "local:keystore");
    assert!(v["kek_age_seconds"].as_u64().is_some_and(|a| a < 3600), "{v}");

    let o = evfs(&["passwd", "vol", "--passfile", "pass2", "--new-passfile", "pass"], d);
    assert_eq!(code(&o), 10, "wrong old passphrase");
    assert!(stderr(&o).contains("wrong passphrase"));
    let o = evfs(&["passwd", "vol", "--passfile", "pass", "--new-passfile", "pass2"], d);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_envelopefs"))
        .args(["passwd", "vol", "--new-passfile", "pass"])
        .env("ENVELOPEFS_PASSFILE", d.join("pass2"))
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "ENVELOPEFS_PASSFILE is honoured: {}", stderr(&o));
    let o = evfs(&["passwd", "vol", "--extpass", "echo first", "--new-extpass", "echo third"], d);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let o = evfs(&["status", "missing"], d);
    assert_eq!(code(&o), 11);
    assert!(stderr(&o).contains("missing") && stderr(&o).contains("not an envelopefs volume"));
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let tmp = scratch();
    let o = evfs(&["init", "v", "--cipher", "rot13"], tmp.path());
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("rot13"));
    let o = evfs(&["init", "v", "--extent-size", "3M"], tmp.path());
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("power of two"));
    assert!(!tmp.path().join("v").exists());
}

#[test]
fn no_passphrase_source_is_a_clear_error() {
    if std::fs::File::open("/dev/tty").is_ok() {
        return; // a terminal would prompt; this case is about running without one
    }
    let tmp = scratch();
    let o = evfs(&["init", "v"], tmp.path());
    assert_eq!(code(&o), 17);
    assert!(stderr(&o).contains("--passfile"), "{}", stderr(&o));
    assert!(!tmp.path().join("v").exists(), "a failed init leaves nothing behind");
}

#[test]
fn help_explains_every_command() {
    let tmp = scratch();
    let o = evfs(&["--help"], tmp.path());
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in ["init", "passwd", "status"] {
        assert!(out.contains(cmd), "{out}");
    }
}

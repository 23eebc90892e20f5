//! `status` for people: the report `status --json` prints (stable, docs/OPERATIONS.md) as
//! aligned text, with counts, ages in human units and rates in %. Every field of the report
//! is shown: the ones it knows in their place, any other one after them as `name: value`.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde_json::Value;

/// Fields [`render`] shows in their place.
const SHOWN: &[&str] = &[
    "cipherdir",
    "volume_id",
    "mounted",
    "mountpoint",
    "pid",
    "mounted_seconds",
    "memory_locked",
    "transport",
    "shredded",
    "cipher",
    "format_version",
    "volume_format",
    "extent_size",
    "files",
    "wrapped_deks",
    "open_files",
    "kms_uri",
    "root_check",
    "root_rotated_since_mount",
    "kek_id",
    "kek_generation",
    "kek_age_seconds",
    "kms_calls",
    "dek_cache",
    "scratch",
    "log",
    "tenants",
];

/// `seconds` as people say it: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn age(seconds: u64) -> String {
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86_400);
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{m} min"),
        3600..86_400 => format!("{h} h {} min", m % 60),
        _ => format!("{d} d {} h", h % 24),
    }
}

/// `bytes` in binary units: `4 KiB`, `1 MiB`, `1.5 GiB`.
pub fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A root re-check's state, in words.
fn root_check(r: &Value) -> String {
    let state = r["state"].as_str().unwrap_or("off");
    let mut out = match (state, r["interval_seconds"].as_f64()) {
        ("off", _) => "not re-checked".to_string(),
        (s, Some(every)) => format!("{s}, re-checked every {}", age(every as u64)),
        (s, None) => s.to_string(),
    };
    if let Some(misses) = r["misses"].as_u64().filter(|&m| m > 0) {
        let _ = write!(out, ", {misses} missed");
    }
    for k in ["cause", "answer"] {
        if let Some(a) = r[k].as_str() {
            let _ = write!(out, "; {a}");
        }
    }
    out
}

/// The report `v` (as `status --json` prints it) as aligned text.
pub fn render(v: &Value) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, val: String| rows.push((k.to_string(), val));
    row("volume", format!("{} in {}", text(&v["volume_id"]), text(&v["cipherdir"])));
    let state = if v["shredded"] == true {
        "shredded".to_string()
    } else if v["mounted"] == true {
        let mut s = format!("mounted on {}", text(&v["mountpoint"]));
        if let Some(secs) = v["mounted_seconds"].as_u64() {
            let _ = write!(s, " for {}", age(secs));
        }
        if let Some(pid) = v["pid"].as_u64() {
            let _ = write!(s, " (daemon {pid}{})", if v["memory_locked"] == true { ", memory locked" } else { "" });
        }
        s
    } else if v["pid"].is_u64() {
        format!("dark, detached (daemon {} still holds files open)", num(&v["pid"]))
    } else {
        "not mounted".to_string()
    };
    row("state", state);
    match v["transport"]["kind"].as_str() {
        Some("io_uring") => row(
            "transport",
            format!(
                "io_uring, {} ring{} ({} requests served, {} of them in the ring threads)",
                num(&v["transport"]["rings"]),
                if v["transport"]["rings"] == 1 { "" } else { "s" },
                num(&v["transport"]["requests"]),
                num(&v["transport"]["answered_in_ring"])
            ),
        ),
        Some(kind) => match v["transport"]["io_uring_refused"].as_str() {
            Some(why) => row("transport", format!("{kind} (--io-uring refused: {why})")),
            None => row("transport", kind.to_string()),
        },
        None => {}
    }
    let format = v["volume_format"].as_u64().map(|f| format!("format {f}, ")).unwrap_or_default();
    row("data", format!("{format}{}, {} extents (one DEK each)", text(&v["cipher"]), size(num(&v["extent_size"]))));
    let mut files = format!("{} ({} wrapped DEKs)", num(&v["files"]), num(&v["wrapped_deks"]));
    if let Some(open) = v["open_files"].as_u64() {
        let _ = write!(files, ", {open} open");
    }
    row("files", files);
    let mut root = text(&v["kms_uri"]);
    if v["root_check"].is_object() {
        let _ = write!(root, "; {}", root_check(&v["root_check"]));
    }
    if v["root_rotated_since_mount"] == true {
        root.push_str("; rotated since mount");
    }
    row("root", root);
    let mut kek = format!("{}, generation {}", text(&v["kek_id"]), num(&v["kek_generation"]));
    if let Some(a) = v["kek_age_seconds"].as_u64() {
        let _ = write!(kek, ", made {} ago", age(a));
    }
    row("KEK", kek);
    if let Some(c) = v["kms_calls"].as_object() {
        let n = |k: &str| c.get(k).map(num).unwrap_or(0);
        row("KMS calls", format!("{} unwrap, {} wrap, {} re-check", n("unwrap"), n("wrap"), n("recheck")));
    }
    if let Some(c) = v["dek_cache"].as_object() {
        let n = |k: &str| c.get(k).map(num).unwrap_or(0);
        let rate = c.get("hit_rate").and_then(Value::as_f64).unwrap_or(0.0) * 100.0;
        row(
            "DEK cache",
            format!("{} entries, hit rate {rate:.1} % ({} hits, {} misses)", n("entries"), n("hits"), n("misses")),
        );
    }
    if let Some(s) = v["scratch"].as_object() {
        let dirs: Vec<String> = s.get("dirs").and_then(Value::as_array).into_iter().flatten().map(text).collect();
        let key = s.get("key").map(text).unwrap_or_default();
        row("scratch", if dirs.is_empty() { "none".into() } else { format!("{} (key {key})", dirs.join(", ")) });
    }
    if v["log"].is_string() {
        row("log", text(&v["log"]));
    }
    // Anything else the report holds (a newer daemon's fields), as it is.
    let shown: BTreeSet<&str> = SHOWN.iter().copied().collect();
    for (k, val) in v.as_object().into_iter().flatten().filter(|(k, _)| !shown.contains(k.as_str())) {
        row(&k.replace('_', " "), text(val));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, val) in &rows {
        let _ = writeln!(out, "{k:<width$}  {val}");
    }
    if let Some(tenants) = v["tenants"].as_array().filter(|t| !t.is_empty()) {
        let _ = writeln!(out, "\ntenants:");
        let w = tenants.iter().map(|t| text(&t["label"]).len()).max().unwrap_or(0);
        for t in tenants {
            let mut line = format!("  {:<w$}  {:<6}  {}", text(&t["label"]), text(&t["state"]), text(&t["root"]));
            if t["files"].is_u64() {
                let _ = write!(line, ", {} files ({} wrapped DEKs)", num(&t["files"]), num(&t["wrapped_deks"]));
            }
            if let Some(why) = t["reason"].as_str() {
                let _ = write!(line, "; {why}");
            }
            if t["root_check"].is_object() && t["root_check"]["state"] != "off" {
                let _ = write!(line, "; {}", root_check(&t["root_check"]));
            }
            let _ = writeln!(out, "{line}  (id {})", text(&t["id"]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes_read_as_people_say_them() {
        assert_eq!(age(0), "0 s");
        assert_eq!(age(59), "59 s");
        assert_eq!(age(125), "2 min");
        assert_eq!(age(3 * 3600 + 5 * 60 + 9), "3 h 5 min");
        assert_eq!(age(2 * 86_400 + 4 * 3600), "2 d 4 h");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(100), "100 B");
    }

    #[test]
    fn a_mounted_report_reads_as_aligned_text_without_json() {
        let v = serde_json::json!({
            "cipherdir": "/srv/enc", "volume_id": "ab", "mounted": true, "mountpoint": "/srv/plain",
            "pid": 42, "mounted_seconds": 7300, "memory_locked": true, "shredded": false,
            "transport": {"kind": "io_uring", "rings": 2, "requests": 7, "answered_in_ring": 5},
            "cipher": "aes-256-gcm-siv", "format_version": 1, "volume_format": 2, "extent_size": 1048576, "files": 3,
            "wrapped_deks": 5, "open_files": 1, "kms_uri": "local:keystore", "root_check": {"state": "off"},
            "root_rotated_since_mount": false, "kek_id": "cd", "kek_generation": 2, "kek_age_seconds": 90_000,
            "kms_calls": {"wrap": 0, "unwrap": 1, "recheck": 0},
            "dek_cache": {"entries": 2, "hits": 3, "misses": 1, "hit_rate": 0.75},
            "scratch": {"dirs": ["/tmp"], "key": "loaded"}, "log": "/run/x.log", "future_field": "kept",
            "tenants": [{"label": "/t", "state": "closed", "root": "aws-kms:k", "id": "ef", "reason": "locked"}]
        });
        let text = render(&v);
        // Aligned: every value of the table starts in one column.
        let starts: BTreeSet<usize> = text
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.find("  ").map(|i| i + l[i..].len() - l[i..].trim_start().len()).unwrap())
            .collect();
        assert_eq!(starts.len(), 1, "{text}");
        let squeezed = |t: &str| t.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
        let flat = squeezed(&text.replace('\n', " | "));
        for want in [
            "state      mounted on /srv/plain for 2 h 1 min (daemon 42, memory locked)",
            "transport  io_uring, 2 rings (7 requests served, 5 of them in the ring threads)",
            "data       format 2, aes-256-gcm-siv, 1 MiB extents",
            "files      3 (5 wrapped DEKs), 1 open",
            "KEK        cd, generation 2, made 1 d 1 h ago",
            "DEK cache  2 entries, hit rate 75.0 % (3 hits, 1 misses)",
            "scratch    /tmp (key loaded)",
            "future field  kept",
            "/t closed aws-kms:k; locked (id ef)",
            "state mounted",
        ] {
            assert!(flat.contains(&squeezed(want)), "{want:?} not in:\n{text}");
        }
        assert!(!text.contains('{'), "no JSON in the human view:\n{text}");
    }
}

//! Memory and log hygiene of the mount daemon, checked from outside: no core dumps, memory
//! locked and excluded from dumps, and no key, passphrase or file content in its log even
//! at trace level.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::mount::{ok, MountFixture};
use envelopefs::crypto::KeyWrapper;
use envelopefs::format::VolumeHeader;
use envelopefs::kms::{self, KmsContext};
use envelopefs::secret::Passphrase;

const PASSPHRASE: &str = "mount test passphrase";

fn daemon_pid(m: &MountFixture) -> u32 {
    let o = m.run(&["status".as_ref(), m.mnt.as_os_str(), "--json".as_ref()]);
    ok(&o);
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"].as_u64().unwrap() as u32
}

fn proc_field(pid: u32, file: &str, field: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {file}")).to_string()
}

#[test]
fn the_daemon_cannot_dump_core_and_keeps_its_memory_out_of_swap() {
    let m = MountFixture::new(&[]);
    fs::write(m.p("f"), vec![7u8; 3 << 20]).unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap().len(), 3 << 20);
    let pid = daemon_pid(&m);
    let core = proc_field(pid, "limits", "Max core file size");
    assert!(core.split_whitespace().filter(|w| *w == "0").count() == 2, "{core}");
    let filter = fs::read_to_string(format!("/proc/{pid}/coredump_filter")).unwrap();
    assert_eq!(u32::from_str_radix(filter.trim(), 16).unwrap(), 0, "every mapping excluded from dumps");
    let status: serde_json::Value =
        serde_json::from_slice(&m.run(&["status".as_ref(), m.mnt.as_os_str(), "--json".as_ref()]).stdout).unwrap();
    // The daemon inherits our capabilities: with CAP_IPC_LOCK (root, outside a restricted
    // container) it must have locked its memory.
    if envelopefs::sys::has_ipc_lock() {
        assert_eq!(status["memory_locked"], true, "{status}");
        let kib = |f: &str| -> u64 { proc_field(pid, "status", f).split_whitespace().nth(1).unwrap().parse().unwrap() };
        // Every resident page is locked (MCL_ONFAULT locks pages as they are touched).
        assert!(
            kib("VmLck:") > 0 && kib("VmLck:") >= kib("VmRSS:") / 2,
            "VmLck {} VmRSS {}",
            kib("VmLck:"),
            kib("VmRSS:")
        );
    } else {
        let unlimited = fs::read_to_string("/proc/self/limits")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Max locked memory") && l.contains("unlimited"));
        assert_eq!(
            status["memory_locked"], unlimited,
            "without CAP_IPC_LOCK only an unlimited memlock locks: {status}"
        );
    }
}

/// The ways a key could show up in a log: raw, hex (both cases), base64 (both alphabets,
/// padded or not) and Rust's `Debug` of a byte array.
fn renderings(key: &[u8]) -> Vec<Vec<u8>> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let e = base64::engine::general_purpose::STANDARD.encode(key);
    let u = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let debug = format!("{:?}", &key[..8]);
    vec![
        key.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        e.trim_end_matches('=').as_bytes().to_vec(),
        u.into_bytes(),
        debug.trim_end_matches(']').as_bytes().to_vec(),
    ]
}

/// KEK and every DEK of the (unmounted) volume, unwrapped here with the passphrase.
fn volume_keys(cipherdir: &Path) -> Vec<Vec<u8>> {
    let header = VolumeHeader::decode(&fs::read(cipherdir.join("envelopefs.conf")).unwrap()).unwrap();
    let k = kms::open(&header.kms_uri, cipherdir, &Passphrase::new(PASSPHRASE).unwrap()).unwrap();
    let kek = envelopefs::kms::Kms::unwrap(
        &k,
        &header.wrapped_kek,
        &KmsContext::kek(header.volume_id, header.kek_generation),
    )
    .unwrap();
    let mut keys = vec![kek.expose().to_vec()];
    let wrapper = KeyWrapper::new(&kek);
    let c = rusqlite::Connection::open(cipherdir.join("meta.db")).unwrap();
    let mut s = c.prepare("SELECT file_id, idx, kek_id, wrapped FROM extents").unwrap();
    let rows = s
        .query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, Vec<u8>>(3)?))
        })
        .unwrap();
    for row in rows {
        let (file, idx, kek_id, wrapped) = row.unwrap();
        let mut aad = b"EVFSDEK1".to_vec();
        aad.extend_from_slice(&header.volume_id);
        aad.extend_from_slice(&file);
        aad.extend_from_slice(&(idx as u64).to_le_bytes());
        aad.extend_from_slice(&kek_id);
        let dek = wrapper.unwrap::<32>(&wrapped, &aad).expect("the DEK unwraps under the current KEK");
        keys.push(dek.expose().to_vec());
    }
    keys
}

#[test]
fn a_trace_level_log_holds_no_key_passphrase_or_content() {
    let tmp = common::scratch();
    let (cipher, mnt, passfile, log) =
        (tmp.path().join("c"), tmp.path().join("m"), tmp.path().join("pass"), tmp.path().join("daemon.log"));
    fs::create_dir(&mnt).unwrap();
    fs::write(&passfile, format!("{PASSPHRASE}\n")).unwrap();
    let run = |args: &[&std::ffi::OsStr]| common::mount::evfs(args);
    ok(&run(&["init".as_ref(), cipher.as_os_str(), "--passfile".as_ref(), passfile.as_os_str()]));

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_envelopefs"))
        .args(["mount".as_ref(), cipher.as_os_str(), mnt.as_os_str(), "--foreground".as_ref()])
        .args(["--passfile".as_ref(), passfile.as_os_str()])
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string("/proc/self/mountinfo").unwrap().contains(mnt.to_str().unwrap()) {
        assert!(Instant::now() < deadline, "mount did not come up: {}", fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }

    const MARKER: &[u8] = b"CONTENT-MARKER-7f3a9c-do-not-log";
    let body: Vec<u8> = MARKER.iter().copied().cycle().take(300_000).collect();
    fs::write(mnt.join("NAME-MARKER-5b1e.txt"), &body).unwrap();
    common::write_synced(&mnt.join("synced.txt"), &body[..5000]);
    assert_eq!(fs::read(mnt.join("NAME-MARKER-5b1e.txt")).unwrap(), body);
    fs::rename(mnt.join("NAME-MARKER-5b1e.txt"), mnt.join("NAME-MARKER-renamed")).unwrap();
    fs::create_dir(mnt.join("dir")).unwrap();
    fs::write(mnt.join("dir/small"), MARKER).unwrap();
    ok(&run(&["rotate".as_ref(), cipher.as_os_str(), "--kek".as_ref()]));
    assert_eq!(fs::read(mnt.join("NAME-MARKER-renamed")).unwrap(), body);
    let _ = fs::read(mnt.join("missing"));

    ok(&run(&["umount".as_ref(), mnt.as_os_str()]));
    assert!(daemon.wait().unwrap().success());

    let logged = fs::read(&log).unwrap();
    let _ = fs::copy(&log, "/tmp/hygiene-daemon.log");
    let text = String::from_utf8_lossy(&logged);
    assert!(text.contains("DEBUG") && text.contains("mounted"), "the log is at trace level: {text:.2000}");
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("content".into(), MARKER.to_vec()),
        ("content".into(), MARKER[..16].to_vec()),
        ("passphrase".into(), PASSPHRASE.as_bytes().to_vec()),
        ("file name".into(), b"NAME-MARKER".to_vec()),
    ];
    let keys = volume_keys(&cipher);
    assert!(keys.len() >= 4, "KEK and DEKs: {}", keys.len());
    for (i, k) in keys.iter().enumerate() {
        for r in renderings(k) {
            secrets.push((format!("key {i}"), r));
        }
    }
    for (what, needle) in &secrets {
        assert!(
            !common::contains(&logged, needle),
            "{what} appears in the trace log ({})",
            String::from_utf8_lossy(needle)
        );
    }
}

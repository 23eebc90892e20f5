//! Real roots of trust for tests: a SoftHSM2 token in a private directory, and a moto
//! AWS-KMS-API server on a free loopback port. `scripts/test.sh` installs both; a test that
//! finds them missing fails and says how to get them.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A freshly initialised SoftHSM2 token (label "evfs", user PIN 1234) in its own directory.
pub struct SoftHsm {
    pub dir: TempDir,
    pub token: String,
}

impl SoftHsm {
    pub fn new() -> SoftHsm {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "{SOFTHSM_MODULE} is missing: run scripts/test.sh (it installs softhsm2)"
        );
        let dir = super::scratch();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("pin"), "1234\n").unwrap();
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "evfs", "--so-pin", "0000", "--pin", "1234"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util runs");
        assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
        SoftHsm { dir, token: "evfs".into() }
    }

    pub fn uri(&self, object: &str) -> String {
        format!("pkcs11:module={SOFTHSM_MODULE};token={};object={object}", self.token)
    }

    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    /// Destroys the AES key labelled `label` as another holder of the token's PIN would: in
    /// a process of its own (PKCS#11 is set up once per process, with the configuration of
    /// the token in the environment), the calling test binary's ignored test
    /// `helper_destroy_key_object`, which calls [`destroy_key_object_from_env`].
    pub fn destroy_in_helper(&self, label: &str) {
        let helper = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "helper_destroy_key_object", "--nocapture"])
            .env("SOFTHSM2_CONF", self.dir.path().join("softhsm2.conf"))
            .env("EVFS_DESTROY_LABEL", label)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&helper.stdout).contains("destroyed"), "{helper:?}");
    }

    /// What every envelopefs command needs to reach the token.
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.dir.path().join("softhsm2.conf").into()),
            ("ENVELOPEFS_PIN_FILE".into(), self.pin_file().into()),
            // The operator trusts this token's keys (a header naming another root is refused).
            (envelopefs::kms::ROOTS_ENV.into(), format!("pkcs11:module={SOFTHSM_MODULE};token={}", self.token).into()),
        ]
    }
}

/// A moto server (the AWS KMS API) on 127.0.0.1; stopped on drop.
pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVELOPEFS_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.0 request; the status line's code, if anything answers.
fn http(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Moto {
    pub fn start() -> Moto {
        let bin = moto_server();
        assert!(bin.exists(), "{} is missing: run scripts/test.sh (it installs moto in a venv)", bin.display());
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut m = Moto { port, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET", "/moto-api/").is_none() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!("moto_server exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Stops the server (the KMS "goes away").
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Makes the server forget every key (moto's reset): a root that no longer exists.
    pub fn reset(&self) {
        assert_eq!(http(self.port, "POST", "/moto-api/reset"), Some(200), "moto's reset endpoint");
    }

    /// What every envelopefs command needs to reach this server (and nothing else).
    pub fn env(&self) -> Vec<(String, OsString)> {
        let none = OsString::from("/nonexistent");
        vec![
            ("AWS_ENDPOINT_URL_KMS".into(), format!("http://127.0.0.1:{}", self.port).into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_CONFIG_FILE".into(), none.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), none),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            // moto's account: the operator trusts its keys in this region.
            (envelopefs::kms::ROOTS_ENV.into(), "aws-kms:arn:aws:kms:us-east-1:123456789012:key/*".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The helper process's work (see [`SoftHsm::destroy_in_helper`]): nothing without
/// `EVFS_DESTROY_LABEL`.
pub fn destroy_key_object_from_env() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let Ok(label) = std::env::var("EVFS_DESTROY_LABEL") else { return };
    let ctx = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "evfs")
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session.login(UserType::User, Some(&AuthPin::new("1234".into()))).unwrap();
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.into_bytes())])
        .unwrap();
    assert_eq!(keys.len(), 1);
    session.destroy_object(keys[0]).unwrap();
    println!("destroyed");
}

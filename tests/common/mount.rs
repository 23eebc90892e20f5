//! A real envelopefs mount for tests: its own temp dir, the real binary, unmounted in Drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

pub fn evfs(args: &[&std::ffi::OsStr]) -> Output {
    evfs_env(args, &[])
}

/// Runs the binary with extra environment variables (a KMS's settings, say).
pub fn evfs_env(args: &[&std::ffi::OsStr], env: &[(String, std::ffi::OsString)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envelopefs"));
    c.args(args).env_remove("ENVELOPEFS_PASSFILE").stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn ok(o: &Output) {
    assert!(o.status.success(), "envelopefs failed ({:?}): {}", o.status, String::from_utf8_lossy(&o.stderr));
}

pub struct MountFixture {
    pub tmp: TempDir,
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub passfile: PathBuf,
    /// Environment of every command the fixture runs.
    pub env: Vec<(String, std::ffi::OsString)>,
    mounted: bool,
    /// The disk directory CIPHERDIR is in ([`MountFixture::on_disk`]), removed after Drop
    /// has unmounted.
    _disk: Option<TempDir>,
}

impl MountFixture {
    /// A new volume (`init_args` passed to init) mounted at `<tmp>/mnt`.
    pub fn new(init_args: &[&str]) -> Self {
        Self::new_with(init_args, Vec::new())
    }

    /// A new volume whose commands all run with `env`.
    pub fn new_with(init_args: &[&str], env: Vec<(String, std::ffi::OsString)>) -> Self {
        let tmp = super::scratch();
        let cipher = tmp.path().join("cipher");
        Self::init(tmp, cipher, None, init_args, env)
    }

    /// A new volume (default `init`) whose CIPHERDIR is on a disk, not tmpfs, mounted: for
    /// what needs a page cache to miss. `None` (the test has nothing to run) where no
    /// directory on a disk is found.
    pub fn on_disk(prefix: &str) -> Option<Self> {
        let disk = super::disk_scratch(prefix)?;
        let cipher = disk.path().join("c");
        Some(Self::init(super::scratch(), cipher, Some(disk), &[], Vec::new()))
    }

    fn init(
        tmp: TempDir,
        cipher: PathBuf,
        disk: Option<TempDir>,
        init_args: &[&str],
        env: Vec<(String, std::ffi::OsString)>,
    ) -> Self {
        assert!(Path::new("/dev/fuse").exists(), "mount tests need /dev/fuse (CI provides it)");
        let (mnt, passfile) = (tmp.path().join("mnt"), tmp.path().join("pass"));
        std::fs::create_dir(&mnt).unwrap();
        std::fs::write(&passfile, "mount test passphrase\n").unwrap();
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["init".as_ref(), cipher.as_os_str(), "--passfile".as_ref(), passfile.as_os_str()];
        args.extend(init_args.iter().map(std::ffi::OsStr::new));
        ok(&evfs_env(&args, &env));
        let mut m = MountFixture { tmp, cipher, mnt, passfile, env, mounted: false, _disk: disk };
        m.mount();
        m
    }

    /// A fixture for a volume made elsewhere (on a file system of the test's own); not
    /// mounted yet.
    pub fn adopt_existing(cipher: PathBuf, mnt: PathBuf, passfile: PathBuf) -> Self {
        MountFixture { tmp: super::scratch(), cipher, mnt, passfile, env: Vec::new(), mounted: false, _disk: None }
    }

    pub fn mount(&mut self) {
        self.mount_with(&[]);
    }

    /// Mounts with extra `mount` arguments.
    pub fn mount_with(&mut self, extra: &[&str]) {
        ok(&self.try_mount(extra));
        self.mounted = true;
        // scripts/test.sh runs the mount suites again over the io_uring rings: each mount
        // must then really serve over them.
        if let Ok(kind) = std::env::var("ENVELOPEFS_TEST_EXPECT_TRANSPORT") {
            let v = status(self);
            assert_eq!(v["transport"]["kind"], kind.as_str(), "{v:#}");
        }
    }

    /// Marks the volume as mounted by the test itself, so Drop unmounts it.
    pub fn adopt(&mut self) {
        self.mounted = true;
    }

    pub fn try_mount(&self, extra: &[&str]) -> Output {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "mount".as_ref(),
            self.cipher.as_os_str(),
            self.mnt.as_os_str(),
            "--passfile".as_ref(),
            self.passfile.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        // Arguments every mount adds (scripts/test.sh: `--io-uring` for a second pass).
        let every = std::env::var("ENVELOPEFS_TEST_MOUNT_ARGS").unwrap_or_default();
        args.extend(every.split_whitespace().map(std::ffi::OsStr::new));
        self.run(&args)
    }

    /// `tenant add CIPHERDIR DIR --kms URI --create-key` (the volume unmounted).
    pub fn tenant_add(&self, dir: &str, uri: &str) -> Output {
        self.run(&[
            "tenant".as_ref(),
            "add".as_ref(),
            self.cipher.as_os_str(),
            dir.as_ref(),
            "--kms".as_ref(),
            uri.as_ref(),
            "--create-key".as_ref(),
            "--passfile".as_ref(),
            self.passfile.as_os_str(),
        ])
    }

    /// Runs the binary with this fixture's environment.
    pub fn run(&self, args: &[&std::ffi::OsStr]) -> Output {
        evfs_env(args, &self.env)
    }

    /// SIGKILLs the mount's daemon, as a crash would, and clears the dead mount.
    pub fn crash(&mut self) {
        let o = self.run(&["status".as_ref(), self.mnt.as_os_str(), "--json".as_ref()]);
        ok(&o);
        let pid = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"].as_u64().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Lazily: a test may still hold files of the dead mount open.
        let _ = Command::new("fusermount3").arg("-uz").arg(&self.mnt).stderr(Stdio::null()).status();
        self.mounted = false;
    }

    /// The volume was unmounted by other means (a shred): Drop has nothing to do.
    pub fn disown(&mut self) {
        self.mounted = false;
    }

    pub fn unmount(&mut self) {
        ok(&self.run(&["umount".as_ref(), self.mnt.as_os_str()]));
        self.mounted = false;
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// The end of the daemon's log on stderr (a failed test shows what the daemon saw).
    fn print_daemon_log(&self) {
        let o = self.run(&["status".as_ref(), self.mnt.as_os_str(), "--json".as_ref()]);
        let log = serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .ok()
            .and_then(|v| v["log"].as_str().map(String::from));
        if let Some(text) = log.and_then(|l| std::fs::read_to_string(l).ok()) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- the daemon's log, last lines ---\n{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for MountFixture {
    fn drop(&mut self) {
        if self.mounted && std::thread::panicking() {
            self.print_daemon_log();
        }
        if self.mounted {
            let o = self.run(&["umount".as_ref(), self.mnt.as_os_str()]);
            if !o.status.success() {
                let _ = Command::new("fusermount3").arg("-uz").arg(&self.mnt).status();
            }
        }
    }
}

/// `status MOUNTPOINT --json` of the mounted fixture.
pub fn status(m: &MountFixture) -> serde_json::Value {
    let o = m.run(&["status".as_ref(), m.mnt.as_os_str(), "--json".as_ref()]);
    ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The tenant labelled `label` in a `status` report.
pub fn tenant<'a>(v: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    v["tenants"].as_array().unwrap().iter().find(|t| t["label"] == label).unwrap_or_else(|| panic!("{label}: {v:#}"))
}

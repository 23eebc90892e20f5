//! The `envelopefs` command line: parses arguments, calls the library, maps errors to the
//! exit codes documented in `docs/OPERATIONS.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use envelopefs::control;
use envelopefs::daemon::MountRequest;
use envelopefs::format::{hex, CipherKind, KdfParams};
use envelopefs::fs::{InitOptions, RotationStep, Volume};
use envelopefs::kms::{self, LocalKeystore};
use envelopefs::progress::Progress;
use envelopefs::secret::PassSource;
use envelopefs::tenant::{TenantPassfile, TenantSecrets};
use envelopefs::{Error, Result};
use std::ffi::OsString;
use std::os::fd::AsFd;

/// An encrypted file system built on envelope encryption: a DEK per file extent, wrapped by
/// a per-volume KEK, wrapped by a root key in a KMS.
#[derive(Parser)]
#[command(name = "envelopefs", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How long an HSM or KMS may stay unreachable (retrying with backoff) before a command
    /// or mount fails, in seconds.
    #[arg(long, global = true, value_name = "SECS", env = "ENVELOPEFS_KMS_TIMEOUT", default_value_t = 10.0)]
    kms_timeout: f64,
    /// Trust this KMS root (the URI the volume header names; for PKCS#11 also
    /// 'pkcs11:module=PATH;token=LABEL' for every key of that token). Without it only the
    /// volume's own embedded keystore, ENVELOPEFS_TRUST_ROOT (one per line) and
    /// /etc/envelopefs/roots are trusted: a header naming another root is refused before
    /// anything is loaded or asked. Repeatable.
    #[arg(long, global = true, value_name = "URI")]
    trust_root: Vec<String>,
    /// Append an audit record (JSON line) of every KMS call to FILE.
    #[arg(long, global = true, value_name = "FILE", env = "ENVELOPEFS_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// No progress display (long commands show one on a terminal by default).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Progress of long commands as JSON lines on stderr (op, stage, done, total,
    /// per_second, seconds_left, finished), for scripts.
    #[arg(long, global = true, conflicts_with = "quiet")]
    progress_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new encrypted volume in CIPHERDIR (missing or empty).
    Init {
        cipherdir: PathBuf,
        /// Root key location: local:PATH (embedded passphrase keystore; relative paths are
        /// inside CIPHERDIR; default local:keystore),
        /// 'pkcs11:module=PATH;token=LABEL;object=KEYLABEL' (an AES key in an HSM token; PIN
        /// from --pin-file or ENVELOPEFS_PIN_FILE), or aws-kms:KEY_ID_OR_ARN (AWS KMS API;
        /// standard AWS credentials, region and AWS_ENDPOINT_URL_KMS).
        #[arg(long, value_name = "URI")]
        kms: Option<String>,
        /// Generate the root key in the HSM (a non-extractable AES-256 key labelled KEYLABEL)
        /// or KMS (a new symmetric key; the volume records its ARN).
        #[arg(long)]
        create_key: bool,
        /// Data cipher: aes-256-gcm-siv (authenticated, default) or aes-256-xts
        /// (length-preserving, no integrity).
        #[arg(long, default_value = "aes-256-gcm-siv", value_parser = parse_cipher)]
        cipher: CipherKind,
        /// Bytes per extent (one DEK each): a power of two from 4K to 16M.
        #[arg(long, default_value = "1M", value_parser = parse_extent_size)]
        extent_size: u8,
        /// Data format: 2 (default for aes-256-gcm-siv: each block a whole page, written
        /// whole or not at all, and an older copy of a block is an integrity error) or 1 (the
        /// format before it; the only one for aes-256-xts).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
        format: Option<u8>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Change the passphrase of the embedded keystore (re-seals the root key; nothing else
    /// changes).
    Passwd {
        cipherdir: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
        /// Read the new passphrase from the first line of FILE.
        #[arg(long, value_name = "FILE")]
        new_passfile: Option<PathBuf>,
        /// Get the new passphrase from the first line COMMAND prints.
        #[arg(long, value_name = "COMMAND")]
        new_extpass: Option<String>,
        /// Change the passphrase of the tenant whose root is DIR (its own embedded keystore;
        /// the old one from --tenant-passfile or the terminal) instead of the volume's.
        #[arg(long, value_name = "DIR")]
        tenant: Option<PathBuf>,
        #[command(flatten)]
        tenant_pass: TenantPassArgs,
    },
    /// Mount CIPHERDIR's plaintext view on MOUNTPOINT. Returns once the mount is ready (the
    /// daemon keeps serving it), or fails with the reason.
    Mount {
        cipherdir: PathBuf,
        mountpoint: PathBuf,
        /// Stay attached and log to stderr (RUST_LOG=envelopefs=debug for more).
        #[arg(short, long)]
        foreground: bool,
        /// Mount read-only.
        #[arg(long)]
        read_only: bool,
        /// Mount options, comma-separated: ro, rw, allow_other, io_uring, passfile=FILE,
        /// recheck_root=DURATION, offline_grace=DURATION, idle=DURATION,
        /// tenant_passfile=DIR=FILE (the generic fstab options defaults,
        /// auto, noauto, user, nouser, _netdev, nofail, x-* are accepted and ignored).
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// Worker threads serving requests (with --io-uring: per CPU, this spread over the
        /// CPUs, at least four each).
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Serve requests over FUSE io_uring rings, one per CPU, so that a request is answered
        /// on the CPU that made it (much faster for many small requests: unpacking, listing).
        /// Needs Linux 6.14+, `echo Y > /sys/module/fuse/parameters/enable_uring`, and the
        /// daemon mounting as root; without them the mount serves over /dev/fuse, and says so.
        #[arg(long)]
        io_uring: bool,
        /// Make SUBDIR (inside the volume; created if missing, must be empty otherwise) a
        /// scratch directory: its files are keyed by a per-boot scratch key and are destroyed
        /// at umount (unless --keep-scratch) and by a reboot. Repeatable.
        #[arg(long, value_name = "SUBDIR")]
        scratch: Vec<PathBuf>,
        /// The whole mount is scratch (the volume must be empty): nothing written survives
        /// umount or a reboot.
        #[arg(long)]
        ephemeral: bool,
        /// Mount a volume older than this host has seen it (its anchor: a KEK generation or,
        /// format 2, the number of changes of its set of files), because you restored an
        /// older copy on purpose; the anchor moves back to it. Without it such a volume is
        /// refused: someone may have put back old data.
        #[arg(long)]
        accept_rollback: bool,
        /// How often to ask an HSM or KMS root again, while mounted, whether it still vouches
        /// for this volume (one unwrap per interval; 0: never). A revoked root (key destroyed,
        /// disabled or gone, access denied) makes the mount go dark at once: keys zeroized,
        /// scratch destroyed, every request EKEYREVOKED, the mount detached. The embedded
        /// keystore has nothing to re-check. Units: ms, s, m, h, d.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        recheck_root: std::time::Duration,
        /// How long a mount keeps serving while its root cannot be reached (connection
        /// refused, timeouts, throttling), counted from its last answer; then it goes dark
        /// as for a revoked root.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        offline_grace: std::time::Duration,
        /// Unmount by itself after DURATION without any request while no file is open (as
        /// gocryptfs -idle): crypto-shredding's "unmount when done" without anyone
        /// remembering to. Scratch is destroyed as at umount. Units: ms, s, m, h, d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        idle: Option<std::time::Duration>,
        #[command(flatten)]
        pass: PassArgs,
        #[command(flatten)]
        tenant_pass: TenantPassArgs,
        /// Internal: run as the detached daemon child of `mount`.
        #[arg(long, hide = true)]
        daemon_child: bool,
    },
    /// Unmount an envelopefs mount (like `fusermount3 -u`) and wait until its daemon has
    /// committed everything, destroyed its scratch and exited.
    Umount {
        mountpoint: PathBuf,
        /// Keep the scratch files and this boot's scratch key, for a remount before the next
        /// reboot.
        #[arg(long)]
        keep_scratch: bool,
    },
    /// Rotate keys of a volume, mounted or not. `--kek`: a new KEK; every DEK and the name key
    /// are re-wrapped, no data is rewritten; interrupted runs are finished by running it
    /// again. `--rekey PATH...`: re-encrypt those files under fresh DEKs (for a leaked DEK).
    /// `--root`: a new root key in the volume's own embedded keystore; the KEK is re-wrapped.
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["kek", "rekey", "root"])))]
    Rotate {
        cipherdir: PathBuf,
        /// With --kek or --root: rotate that key of the tenant whose root is DIR (a path
        /// inside the volume) instead of the volume's (--root: unmounted only). --rekey
        /// finds the tenant of each path itself.
        #[arg(long, value_name = "DIR", conflicts_with = "rekey")]
        tenant: Option<PathBuf>,
        /// Replace the root key: a new embedded keystore key, a new HSM key object (--to, or
        /// an automatic label), or a re-wrap under the KMS key's current material (or --to).
        #[arg(long)]
        root: bool,
        /// With --root: the new root's KMS URI (same scheme or another).
        #[arg(long, value_name = "URI", requires = "root")]
        to: Option<String>,
        /// With --root --to: generate the new root key there.
        #[arg(long, requires = "root")]
        create_key: bool,
        /// With --root: destroy the old HSM key object if it was made for this volume (its
        /// sealed record says so). Without it the old key is kept.
        #[arg(long, requires = "root")]
        destroy_old_root: bool,
        /// Replace the key-encryption key.
        #[arg(long)]
        kek: bool,
        /// Files (paths inside the volume) to re-encrypt under fresh DEKs.
        #[arg(long, value_name = "PATH", num_args = 1..)]
        rekey: Vec<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
        #[command(flatten)]
        tenant_pass: TenantPassArgs,
    },
    /// Tenants: subtrees with their own KEK under their own root.
    Tenant {
        #[command(subcommand)]
        what: TenantCommand,
    },
    /// Crypto-shred a volume or files in it, mounted or not.
    ///
    /// `--volume` destroys every wrapped KEK copy and the volume's own keystore (O(1), needs
    /// no passphrase): nothing in CIPHERDIR can be decrypted afterwards; a mounted volume is
    /// unmounted. `--file PATH...` deletes the files with their wrapped DEKs, then rotates
    /// the KEK so stray copies of their wrapped DEKs are useless.
    ///
    /// `--tenant DIR` destroys the tenant's KEK copies (O(1)), then removes its directory and
    /// its files; the rest of the volume is untouched (mounted or not).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["volume", "file", "tenant"])))]
    Shred {
        cipherdir: PathBuf,
        /// Destroy the whole volume's keys.
        #[arg(long)]
        volume: bool,
        /// The root directory (a path inside the volume) of the tenant to shred.
        #[arg(long, value_name = "DIR")]
        tenant: Option<PathBuf>,
        /// Files (paths inside the volume) to delete and shred.
        #[arg(long, value_name = "PATH", num_args = 1..)]
        file: Vec<PathBuf>,
        /// Do not ask for confirmation (required without a terminal).
        #[arg(long)]
        yes: bool,
        /// With --volume and an AWS KMS root made for this volume: schedule the key's
        /// deletion after DAYS (7..=30). The volume is unreadable at once either way.
        #[arg(long, value_name = "DAYS", requires = "volume", value_parser = clap::value_parser!(u32).range(7..=30))]
        delete_root_after: Option<u32>,
        /// With --volume and an HSM root made for this volume (its sealed record says so):
        /// destroy the key object too. Without it the key is kept: a key outside CIPHERDIR
        /// is destroyed only when you ask.
        #[arg(long, requires = "volume")]
        destroy_root: bool,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Check an unmounted volume: every data file against its keys in the metadata store,
    /// every written block decrypted. After an unclean shutdown (a killed mount) the
    /// leftovers of uncommitted writes are expected; --repair (or the next read-write mount)
    /// clears them. Exit 0: clean (or all repaired); 4: problems left.
    Fsck {
        cipherdir: PathBuf,
        /// Repair what can be repaired without loss: crash leftovers are cleared; data files
        /// without keys move to /lost+found; keys without data files are kept and listed.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        pass: PassArgs,
        #[command(flatten)]
        tenant_pass: TenantPassArgs,
    },
    /// Convert a format-1 volume (aes-256-gcm-siv) to format 2 in place, unmounted: each
    /// block a whole page written whole or not at all, and an older copy of a block, a file or
    /// the volume an integrity error. Files are converted one at a time, each in one atomic
    /// step; killed at any point, the volume still opens and reads, and running it again
    /// finishes the job.
    Upgrade {
        cipherdir: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Link mount(8)'s helpers (DIR/mount.fuse.envelopefs and DIR/mount.envelopefs) to this
    /// binary, so that `mount -t fuse.envelopefs` and fstab lines of that type work.
    InstallHelper {
        /// Where the links go.
        #[arg(long, value_name = "DIR", default_value = "/sbin")]
        sbin: PathBuf,
        /// What they point to (default: this binary).
        #[arg(long, value_name = "PATH")]
        target: Option<PathBuf>,
    },
    /// Write man pages and shell completions (packaging: scripts/build-deb.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory for the man pages (section 1).
        #[arg(long, value_name = "DIR")]
        man: Option<PathBuf>,
        /// Directory for the bash, zsh and fish completions.
        #[arg(long, value_name = "DIR")]
        completions: Option<PathBuf>,
    },
    /// Show a volume's state (no passphrase needed): header, counts and, when mounted, the
    /// daemon's KMS calls, DEK cache and open files.
    Status {
        /// CIPHERDIR, or the MOUNTPOINT of a mounted volume.
        cipherdir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Make DIR (a path inside the volume) the root of a tenant: its files, names and
    /// attributes are under a KEK of its own, wrapped by a root of its own, which the mount
    /// asks once (and re-checks, for an HSM or KMS key); revoking or shredding it darkens
    /// that subtree only. DIR new (its parent existing) starts empty; DIR existing is
    /// converted: its files are copied under the tenant's keys and the old copies removed
    /// (killed, it is finished by running the same command again). The volume must be
    /// unmounted. The outer
    /// volume's passphrase or PIN unlocks the volume; the tenant's PKCS#11 PIN comes from the
    /// same source, a keystore tenant's new passphrase from --tenant-passfile DIR=FILE or the
    /// terminal.
    Add {
        cipherdir: PathBuf,
        dir: PathBuf,
        /// The tenant's root: local:keystore (an embedded keystore of its own, with a
        /// passphrase of its own; the default), 'pkcs11:module=PATH;token=LABEL;object=KEYLABEL'
        /// or aws-kms:KEY_ID_OR_ARN.
        #[arg(long, value_name = "URI", default_value = "local:keystore")]
        kms: String,
        /// Generate the tenant's root key there.
        #[arg(long)]
        create_key: bool,
        /// Undo the conversion of DIR (an existing directory) that was cut short while its
        /// files were being copied: DIR gets its files back as they were, the half-made
        /// tenant is shredded.
        #[arg(long, conflicts_with = "create_key")]
        abort: bool,
        #[command(flatten)]
        pass: PassArgs,
        #[command(flatten)]
        tenant_pass: TenantPassArgs,
    },
}

/// Passphrase sources. Secrets are never taken from the command line itself.
#[derive(Args)]
struct PassArgs {
    /// Read the passphrase from the first line of FILE (else ENVELOPEFS_PASSFILE, else a
    /// terminal prompt).
    #[arg(long, value_name = "FILE")]
    passfile: Option<PathBuf>,
    /// Get the passphrase from the first line COMMAND prints on stdout.
    #[arg(long, value_name = "COMMAND")]
    extpass: Option<String>,
    /// Read an HSM token's user PIN from the first line of FILE (else ENVELOPEFS_PIN_FILE,
    /// else a terminal prompt).
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
}

/// Passphrases of tenants whose root is an embedded keystore of their own.
#[derive(Args, Default)]
struct TenantPassArgs {
    /// The passphrase of the tenant whose root is DIR (as `status` lists it, or its id) and
    /// whose root is an embedded keystore of its own: the first line of FILE. Repeatable.
    /// Without it a command asks on the terminal, and a mount leaves that tenant locked (its
    /// subtree gives EKEYREVOKED; the rest is served).
    #[arg(long = "tenant-passfile", value_name = "DIR=FILE")]
    tenant_passfile: Vec<TenantPassfile>,
}

impl TenantPassArgs {
    /// The tenants' secrets for a command: their PINs from `pass`, a keystore tenant's
    /// passphrase from its passfile or the terminal.
    fn with<'a>(&'a self, pins: &'a PassSource) -> TenantSecrets<'a> {
        TenantSecrets::new(pins, &self.tenant_passfile, true)
    }
}

impl PassArgs {
    fn source(&self) -> PassSource {
        PassSource {
            passfile: self.passfile.clone(),
            extpass: self.extpass.clone(),
            env_var: Some("ENVELOPEFS_PASSFILE"),
            pin_file: self.pin_file.clone(),
        }
    }
}

fn parse_cipher(s: &str) -> std::result::Result<CipherKind, String> {
    CipherKind::from_name(s).ok_or_else(|| format!("unknown cipher {s:?}: use aes-256-gcm-siv or aes-256-xts"))
}

/// "1M", "64K", "4096" → log2 of the size.
fn parse_extent_size(s: &str) -> std::result::Result<u8, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1u64 << 20),
        _ => (s, 1),
    };
    let bytes = num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(|| format!("bad size {s:?}"))?;
    if !bytes.is_power_of_two() {
        return Err(format!("extent size {s} is not a power of two"));
    }
    let shift = bytes.trailing_zeros() as u8;
    if !envelopefs::format::VolumeHeader::valid_extent_shift(shift) {
        return Err(format!("extent size {s} outside 4K..16M"));
    }
    Ok(shift)
}

fn main() -> ExitCode {
    let cli = match mount_helper_args() {
        Some(args) => Cli::parse_from(args),
        None => Cli::parse(),
    };
    if let Err(e) = setup(&cli) {
        eprintln!("envelopefs: {e}");
        return ExitCode::from(e.exit_code());
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envelopefs: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logging and the KMS timeout; both reach a mount's daemon through the environment.
fn setup(cli: &Cli) -> Result<()> {
    if !(cli.kms_timeout.is_finite() && cli.kms_timeout > 0.0) {
        return Err(Error::InvalidArgument("--kms-timeout must be a positive number of seconds".into()));
    }
    kms::set_timeout(std::time::Duration::from_secs_f64(cli.kms_timeout));
    envelopefs::progress::configure(cli.quiet, cli.progress_json);
    if !cli.trust_root.is_empty() {
        // Through the environment, so a mount's daemon trusts the same roots.
        let mut roots = std::env::var(kms::ROOTS_ENV).unwrap_or_default();
        for r in &cli.trust_root {
            roots.push('\n');
            roots.push_str(r);
        }
        std::env::set_var(kms::ROOTS_ENV, roots.trim_start());
    }
    std::env::set_var("ENVELOPEFS_KMS_TIMEOUT", cli.kms_timeout.to_string());
    let audit = match &cli.audit_log {
        Some(p) => {
            let abs = std::path::absolute(p).map_err(|e| Error::io(p, "resolve", e))?;
            std::env::set_var("ENVELOPEFS_AUDIT_LOG", &abs);
            Some(abs)
        }
        None => None,
    };
    envelopefs::logging::init(audit.as_deref()).map_err(|e| Error::io(audit.unwrap_or_default(), "open audit log", e))
}

fn run(cmd: Command) -> Result<()> {
    // Commands that unwrap keys keep them out of swap and core dumps too (the mount daemon
    // does this itself, loudly).
    if !matches!(
        cmd,
        Command::Status { .. }
            | Command::Umount { .. }
            | Command::Mount { .. }
            | Command::InstallHelper { .. }
            | Command::GenerateDocs { .. }
    ) {
        let _ = envelopefs::sys::harden_process();
        envelopefs::sys::lock_memory(false);
    }
    match cmd {
        Command::Init { cipherdir, kms, create_key, cipher, extent_size, format, pass } => {
            let opts = InitOptions {
                cipher,
                extent_shift: extent_size,
                kms_uri: kms,
                kdf: KdfParams::DEFAULT,
                create_key,
                format,
            };
            let header = Volume::init(&cipherdir, &opts, &pass.source())?;
            println!(
                "Created envelopefs volume {} in {} ({}, {} KiB extents, root key {}).",
                hex(&header.volume_id),
                cipherdir.display(),
                header.cipher.name(),
                header.extent_size() / 1024,
                header.kms_uri
            );
            if kms::check_root(&header.kms_uri, &cipherdir).is_err() {
                println!(
                    "Commands on it need this root trusted: --trust-root '{}' (or {} / {}).",
                    header.kms_uri,
                    kms::ROOTS_ENV,
                    kms::ROOTS_FILE
                );
            }
            Ok(())
        }
        Command::Passwd { cipherdir, pass, new_passfile, new_extpass, tenant: Some(dir), tenant_pass } => {
            let new = PassSource { passfile: new_passfile, extpass: new_extpass, env_var: None, pin_file: None };
            passwd_tenant(&cipherdir, &dir, &pass, &tenant_pass, &new)
        }
        Command::Passwd { cipherdir, pass, new_passfile, new_extpass, .. } => {
            let header = Volume::read_header(&cipherdir)?;
            let path = kms::local_keystore_path(&header.kms_uri, &cipherdir).map_err(|e| match e {
                e @ Error::UntrustedRoot { .. } => e,
                _ => Error::InvalidArgument(format!(
                    "passwd works on local: keystores only; this volume uses {}",
                    header.kms_uri
                )),
            })?;
            let new = PassSource { passfile: new_passfile, extpass: new_extpass, env_var: None, pin_file: None };
            LocalKeystore::change_passphrase(&path, &pass.source(), &new, KdfParams::DEFAULT)?;
            println!("Passphrase of {} changed.", path.display());
            Ok(())
        }
        Command::Status { cipherdir, json } => status(&cipherdir, json),
        Command::InstallHelper { sbin, target } => {
            let target = match target {
                Some(t) => t,
                None => std::env::current_exe()
                    .and_then(|p| p.canonicalize())
                    .map_err(|e| Error::io("", "find own executable", e))?,
            };
            let made = envelopefs::packaging::install_helper(&sbin, &target)?;
            for link in &made {
                println!("{} -> {}", link.display(), target.display());
            }
            if made.is_empty() {
                println!("The helpers in {} already point to {}.", sbin.display(), target.display());
            }
            Ok(())
        }
        Command::GenerateDocs { man, completions } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            for path in man.map(|d| envelopefs::packaging::write_man_pages(&cmd, &d)).transpose()?.into_iter().flatten()
            {
                println!("{}", path.display());
            }
            let written = completions.map(|d| envelopefs::packaging::write_completions(&cmd, &d)).transpose()?;
            for path in written.into_iter().flatten() {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Fsck { cipherdir, repair, pass, tenant_pass } => fsck(&cipherdir, repair, &pass, &tenant_pass),
        Command::Upgrade { cipherdir, pass } => upgrade(&cipherdir, &pass),
        Command::Mount {
            cipherdir,
            mountpoint,
            foreground,
            read_only,
            options,
            threads,
            io_uring,
            mut scratch,
            ephemeral,
            accept_rollback,
            recheck_root,
            offline_grace,
            idle,
            pass,
            tenant_pass,
            daemon_child,
        } => {
            let mut pass = pass;
            if accept_rollback {
                envelopefs::anchor::accept_rollback();
            }
            if ephemeral {
                scratch.push(PathBuf::from("/"));
            }
            let recheck = envelopefs::revocation::Policy::new(recheck_root, offline_grace)?;
            let mut req = MountRequest {
                cipherdir,
                mountpoint,
                read_only,
                allow_other: false,
                threads,
                io_uring,
                scratch,
                recheck,
                tenant_passfiles: tenant_pass.tenant_passfile,
                idle: idle.filter(|d| !d.is_zero()),
            };
            parse_mount_options(&options, &mut req, &mut pass)?;
            mount(req, foreground, daemon_child, pass)
        }
        Command::Rotate { cipherdir, kek: true, tenant: Some(dir), pass, tenant_pass, .. } => {
            rotate_tenant_kek(&cipherdir, &dir, &pass, &tenant_pass)
        }
        Command::Rotate { cipherdir, kek: true, pass, .. } => rotate_kek(&cipherdir, pass),
        Command::Rotate {
            cipherdir,
            root: true,
            tenant: Some(dir),
            to,
            create_key,
            destroy_old_root,
            pass,
            tenant_pass,
            ..
        } => {
            let _lock = unmounted(&cipherdir)?;
            let vol = Volume::open(&cipherdir, &pass.source())?;
            let pins = pass.source();
            let new = envelopefs::tenant::rotate_root(
                &vol,
                &dir,
                &tenant_pass.with(&pins),
                to.as_deref(),
                (create_key, destroy_old_root),
            )?;
            println!(
                "Root key of tenant {} rotated to {}; its KEK was re-wrapped (no data or DEK changed).",
                dir.display(),
                new.kms_uri
            );
            if kms::check_root(&new.kms_uri, &cipherdir).is_err() {
                println!(
                    "Mounting needs the new root trusted: --trust-root '{}' (or {}).",
                    new.kms_uri,
                    kms::ROOTS_ENV
                );
            }
            Ok(())
        }
        Command::Rotate { cipherdir, root: true, to, create_key, destroy_old_root, pass, .. } => {
            let header = Volume::read_live_header(&cipherdir)?;
            // Beside a mount, the header lock alone serializes us with its daemon.
            let _lock = match daemon_of(&cipherdir, &header) {
                Some(_) => None,
                None => Some(envelopefs::daemon::lock_volume(&cipherdir)?),
            };
            let scratch = control::scratch_path(&header.volume_id);
            let is_local = header.kms_uri.starts_with("local:");
            let new = match to {
                None if is_local => Volume::rotate_root(&cipherdir, &pass.source(), &scratch)?,
                to => Volume::rotate_root_kms(
                    &cipherdir,
                    &pass.source(),
                    to.as_deref(),
                    create_key,
                    &scratch,
                    destroy_old_root,
                )?,
            };
            println!(
                "Root key of {} rotated to {}; the KEK was re-wrapped (no data or DEK changed).",
                cipherdir.display(),
                new.kms_uri
            );
            if kms::check_root(&new.kms_uri, &cipherdir).is_err() {
                println!(
                    "The new root is not trusted yet: add '{}' to {} (or pass --trust-root / set {}), or later commands refuse it.",
                    new.kms_uri,
                    kms::ROOTS_FILE,
                    kms::ROOTS_ENV
                );
            }
            Ok(())
        }
        Command::Rotate { cipherdir, rekey, pass, tenant_pass, .. } => {
            let header = Volume::read_live_header(&cipherdir)?;
            if let Some(sock) = daemon_of(&cipherdir, &header) {
                let paths: Vec<String> = rekey.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                let mut req = control::request_for(&cipherdir, "rekey");
                req["paths"] = paths.into();
                let mut progress = Progress::new("rekey");
                progress.stage("re-encrypting files (in the mount's daemon)", Some(rekey.len() as u64));
                let v =
                    control::query_with_progress(&sock, &req, &mut |p| progress.set(p["done"].as_u64().unwrap_or(0)))
                        .ok_or_else(|| Error::Fuse("the mount's daemon did not answer".into()));
                let v = v?;
                progress.set(v["done"].as_array().map_or(0, |d| d.len() as u64));
                progress.finish();
                for d in v["done"].as_array().into_iter().flatten() {
                    println!(
                        "{}: {} bytes re-encrypted under fresh DEKs.",
                        d["path"].as_str().unwrap_or("?"),
                        d["bytes"]
                    );
                }
                control::reply_result(v)?;
                return Ok(());
            }
            let _lock = envelopefs::daemon::lock_volume(&cipherdir)?;
            let vol = Volume::open(&cipherdir, &pass.source())?;
            let mut tenants: Vec<envelopefs::tenant::Opened> = Vec::new();
            let mut progress = Progress::new("rekey");
            progress.stage("re-encrypting files", Some(rekey.len() as u64));
            for path in &rekey {
                let bytes = match envelopefs::tenant::route(&vol, path)? {
                    None => vol.rekey(path)?,
                    Some((t, rest)) => {
                        if !tenants.iter().any(|o| o.entry.id == t.id) {
                            tenants.push(envelopefs::tenant::open(&vol, &t, &tenant_pass.with(&pass.source()))?);
                        }
                        let o = tenants.iter().find(|o| o.entry.id == t.id).expect("opened above");
                        o.vol.rekey(&rest)?
                    }
                };
                progress.inc();
                println!("{}: {bytes} bytes re-encrypted under fresh DEKs.", path.display());
            }
            progress.finish();
            Ok(())
        }
        Command::Shred { cipherdir, tenant: Some(dir), yes, pass, .. } => shred_tenant(&cipherdir, &dir, yes, &pass),
        Command::Shred { cipherdir, volume, file, yes, delete_root_after, destroy_root, pass, .. } => {
            shred(&cipherdir, volume, &file, yes, (destroy_root, delete_root_after), pass)
        }
        Command::Tenant { what: TenantCommand::Add { cipherdir, dir, abort: true, pass, tenant_pass, .. } } => {
            let _lock = unmounted(&cipherdir)?;
            let vol = Volume::open(&cipherdir, &pass.source())?;
            let pins = pass.source();
            let done = envelopefs::tenant::abort_conversion(&vol, &dir, &tenant_pass.with(&pins))?;
            match &done.left {
                None => println!(
                    "The conversion of {} was undone: its files are back at its place; the half-made tenant is shredded.",
                    done.entry.label
                ),
                Some(at) => println!(
                    "The conversion of {} was undone: its files are back at its place. The half-made tenant did not \
                     open, so its volume was left at {}: nothing lists it any more; remove it once you know what it is.",
                    done.entry.label,
                    at.display()
                ),
            }
            Ok(())
        }
        Command::Tenant { what: TenantCommand::Add { cipherdir, dir, kms, create_key, pass, tenant_pass, .. } } => {
            tenant_add(&cipherdir, &dir, (&kms, create_key), &pass, &tenant_pass)
        }
        Command::Umount { mountpoint, keep_scratch } => {
            if keep_scratch {
                let mnt = mountpoint.canonicalize().map_err(|_| Error::NotMounted(mountpoint.clone()))?;
                let source =
                    envelopefs::daemon::mount_source(&mnt).ok_or_else(|| Error::NotMounted(mountpoint.clone()))?;
                let sock =
                    daemon_of(&source, &Volume::read_header(&source)?).ok_or_else(|| Error::NotMounted(mnt.clone()))?;
                control::query(&sock, &control::request_for(&source, "keep-scratch"))
                    .ok_or_else(|| Error::Fuse("the mount's daemon did not answer".into()))?;
            }
            envelopefs::daemon::unmount(&mountpoint, std::time::Duration::from_secs(30))?;
            Ok(())
        }
    }
}

/// Called as `mount.envelopefs` / `mount.fuse.envelopefs` (by mount(8) for fstab entries and
/// `mount -t fuse.envelopefs`): `SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-v]` becomes
/// `envelopefs mount SOURCE MOUNTPOINT -o OPTS`.
fn mount_helper_args() -> Option<Vec<OsString>> {
    let mut args = std::env::args_os();
    let argv0 = PathBuf::from(args.next()?);
    let name = argv0.file_name()?.to_str()?;
    if !name.starts_with("mount.") {
        return None;
    }
    let mut out: Vec<OsString> = vec!["envelopefs".into(), "mount".into()];
    let mut rest = args.peekable();
    while let Some(a) = rest.next() {
        match a.to_str() {
            Some("-o") => {
                out.push("-o".into());
                out.extend(rest.next());
            }
            // mount(8)'s own flags: fake, no-mtab, sloppy, verbose.
            Some("-f" | "-n" | "-s" | "-v") => {}
            _ => out.push(a),
        }
    }
    Some(out)
}

fn shred(
    cipherdir: &Path,
    volume: bool,
    files: &[PathBuf],
    yes: bool,
    (destroy_root, delete_root_after): (bool, Option<u32>),
    pass: PassArgs,
) -> Result<()> {
    let header = Volume::read_live_header(cipherdir)?;
    if !yes {
        let what = if volume { "the whole volume".to_string() } else { format!("{} file(s)", files.len()) };
        confirm_shred(&what, cipherdir)?;
    }
    if let Some(sock) = daemon_of(cipherdir, &header) {
        return shred_mounted(cipherdir, &sock, volume, files, (destroy_root, delete_root_after), pass);
    }
    let lock = envelopefs::daemon::lock_volume(cipherdir)?;
    if volume {
        let started = std::time::Instant::now();
        let scratch = control::scratch_path(&header.volume_id);
        // A root made for this volume in an HSM or KMS is destroyed too, if it can be reached
        // (the PIN or credentials are needed for that, not for the shred itself).
        let root = match kms::local_keystore_path(&header.kms_uri, cipherdir) {
            Ok(_) => None,
            Err(_) => match kms::open(&header.kms_uri, cipherdir, &pass.source()) {
                Ok(k) => Some(k),
                Err(e) => {
                    eprintln!("envelopefs: cannot reach the root to destroy it: {e}");
                    None
                }
            },
        };
        let report = Volume::shred_volume(
            cipherdir,
            &scratch,
            root.as_ref().map(|k| k as &dyn kms::Kms),
            destroy_root,
            delete_root_after,
        )?;
        println!(
            "Volume {} shredded in {:.3?}: every wrapped KEK copy destroyed.",
            hex(&header.volume_id),
            started.elapsed()
        );
        print_root_report(report.root_destroyed, report.root_kept);
        if report.tenants > 0 {
            println!("Its {} tenant volume(s) shredded too (their roots are kept).", report.tenants);
        }
        for failed in &report.tenants_failed {
            println!("Not shredded: {failed}");
        }
        return Ok(());
    }
    let kms = kms::open(&header.kms_uri, cipherdir, &pass.source())?;
    let vol = Volume::open_with_kms(cipherdir, header, &kms)?;
    let r = vol.shred_files(files, &kms)?;
    let left = vol.rotation_left();
    drop(vol);
    drop(lock);
    print_file_shred(r.files, r.names, &hex(&r.kek_id));
    rotation_left(cipherdir, &left)
}

/// Refuses a tenant command on a mounted volume (its daemon would not see the change).
fn unmounted(cipherdir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let header = Volume::read_live_header(cipherdir)?;
    if daemon_of(cipherdir, &header).is_some() {
        return Err(Error::InvalidArgument(format!(
            "{} is mounted: unmount it first (a tenant is added, and its root rotated, offline for now)",
            cipherdir.display()
        )));
    }
    envelopefs::daemon::lock_volume(cipherdir)
}

/// Asks the mount's daemon to do `op` for the tenant whose root is `dir`; its answer.
fn ask_about_tenant(cipherdir: &Path, sock: &Path, op: &str, dir: &Path) -> Result<serde_json::Value> {
    let mut req = control::request_for(cipherdir, op);
    req["tenant"] = dir.to_string_lossy().into_owned().into();
    let v = control::query(sock, &req).ok_or_else(|| Error::Fuse("the mount's daemon did not answer".into()))?;
    control::reply_result(v)
}

/// `rotate --kek --tenant DIR`: through the mount's daemon, or offline.
fn rotate_tenant_kek(cipherdir: &Path, dir: &Path, pass: &PassArgs, tenant_pass: &TenantPassArgs) -> Result<()> {
    let header = Volume::read_live_header(cipherdir)?;
    let (old, new, left) = if let Some(sock) = daemon_of(cipherdir, &header) {
        let v = ask_about_tenant(cipherdir, &sock, "rotate-kek", dir)?;
        let left: Vec<String> =
            v["left"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(String::from)).collect();
        (v["old_kek_id"].as_str().unwrap_or("?").to_string(), v["kek_id"].as_str().unwrap_or("?").to_string(), left)
    } else {
        let _lock = envelopefs::daemon::lock_volume(cipherdir)?;
        let vol = Volume::open(cipherdir, &pass.source())?;
        let entry = envelopefs::tenant::named(&vol, dir)?;
        let t = envelopefs::tenant::open(&vol, &entry, &tenant_pass.with(&pass.source()))?;
        let old = hex(&t.vol.header().kek_id);
        let new = if t.vol.finished_rotation_at_open() {
            t.vol.header()
        } else {
            refuse_before_recovery(&t.vol, dir)?;
            t.vol.rotate_kek(&t.kms, &mut |_, _, _| {})?
        };
        (old, hex(&new.kek_id), t.vol.rotation_left())
    };
    println!("KEK of tenant {} rotated: {old} -> {new} (no data rewritten).", dir.display());
    rotation_left(cipherdir, &left)
}

/// `passwd --tenant DIR`: re-seals the root key of tenant DIR's own keystore under a new
/// passphrase (the volume unmounted).
fn passwd_tenant(
    cipherdir: &Path,
    dir: &Path,
    pass: &PassArgs,
    tenant_pass: &TenantPassArgs,
    new: &PassSource,
) -> Result<()> {
    let _lock = unmounted(cipherdir)?;
    let vol = Volume::open(cipherdir, &pass.source())?;
    let entry = envelopefs::tenant::named(&vol, dir)?;
    let pins = pass.source();
    let asked = TenantSecrets::new(&pins, &[], true);
    let asked = asked.of_entry(&entry);
    let given = new.passfile.is_some() || new.extpass.is_some();
    if !given && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Error::Passphrase(
            "the tenant's new passphrase: use --new-passfile FILE or --new-extpass CMD, or run on a terminal".into(),
        ));
    }
    let new: &dyn envelopefs::secret::Secrets = if given { new } else { &asked };
    envelopefs::tenant::change_passphrase(&vol, &entry, &tenant_pass.with(&pins), new)?;
    println!("Passphrase of tenant {} changed (its root key, KEK and data are unchanged).", entry.label);
    Ok(())
}

fn tenant_add(
    cipherdir: &Path,
    dir: &Path,
    (uri, create_key): (&str, bool),
    pass: &PassArgs,
    tenant_pass: &TenantPassArgs,
) -> Result<()> {
    // Before any thread starts (the volume's own among them), so the signals wait for the
    // thread that says how to resume.
    envelopefs::progress::resumable_on_interrupt(&format!(
        "run `envelopefs tenant add {} {}` again to finish (or add --abort to undo it)",
        cipherdir.display(),
        dir.display()
    ));
    let _lock = unmounted(cipherdir)?;
    let vol = Volume::open(cipherdir, &pass.source())?;
    let added = envelopefs::tenant::add(&vol, dir, uri, create_key, &tenant_pass.with(&pass.source()))?;
    let t = &added.entry;
    if let Some(c) = &added.converted {
        if c.left_beside {
            println!(
                "Finished the conversion of {}: the tenant's own record says its copy was done, so nothing was \
                 copied over it (the volume's record was put back from before?); the directory {} beside it was left \
                 as it is: look at it, then remove it.",
                t.label,
                envelopefs::tenant::source_name(&t.id).to_string_lossy()
            );
        } else if c.source_gone {
            println!(
                "Finished the conversion cut short of {}, but the directory being converted was gone: the tenant \
                 holds what had been copied before.",
                t.label
            );
        } else {
            println!(
                "{}{}: {} files ({} bytes), {} directories and {} other entries copied under the tenant's keys{}; \
                 the old copies are removed with their DEKs.",
                if c.resumed { "Finished the conversion cut short of " } else { "Converted " },
                t.label,
                c.files,
                c.bytes,
                c.dirs,
                c.other,
                if c.skipped > 0 { format!(" ({} already copied before)", c.skipped) } else { String::new() }
            );
        }
    }
    println!(
        "Tenant {} added at {}: its files are under a KEK of its own, wrapped by {}.",
        hex(&t.id),
        t.label,
        t.kms_uri
    );
    if kms::check_root(&t.kms_uri, cipherdir).is_err() {
        println!(
            "Mounting the volume needs this root trusted too: --trust-root '{}' (or {} / {}).",
            t.kms_uri,
            kms::ROOTS_ENV,
            kms::ROOTS_FILE
        );
    }
    Ok(())
}

fn shred_tenant(cipherdir: &Path, dir: &Path, yes: bool, pass: &PassArgs) -> Result<()> {
    if !yes {
        confirm_shred(&format!("tenant {}", dir.display()), cipherdir)?;
    }
    let started = std::time::Instant::now();
    let header = Volume::read_live_header(cipherdir)?;
    let (id, label, root) = if let Some(sock) = daemon_of(cipherdir, &header) {
        let v = ask_about_tenant(cipherdir, &sock, "shred-tenant", dir)?;
        let s = |f: &str| v[f].as_str().unwrap_or("?").to_string();
        (s("id"), s("label"), s("root"))
    } else {
        let _lock = envelopefs::daemon::lock_volume(cipherdir)?;
        let vol = Volume::open(cipherdir, &pass.source())?;
        let t = envelopefs::tenant::shred(&vol, dir, false)?;
        (hex(&t.id), t.label, t.root)
    };
    println!(
        "Tenant {id} ({label}) shredded in {:.3?}: its wrapped KEK and name key are destroyed, its directory and files removed. Its root {root} is kept.",
        started.elapsed(),
    );
    Ok(())
}

/// Asks on the terminal before `what` in `cipherdir` is shredded (no terminal: `--yes`).
fn confirm_shred(what: &str, cipherdir: &Path) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        return Err(Error::InvalidArgument("shred destroys keys for good: confirm with --yes".into()));
    }
    eprint!("Destroy the keys of {what} in {}? Nothing can undo it. Type 'yes': ", cipherdir.display());
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| Error::io("", "read answer", e))?;
    if answer.trim() != "yes" {
        return Err(Error::InvalidArgument("not confirmed; nothing was changed".into()));
    }
    Ok(())
}

/// What `shred --file` verified.
fn print_file_shred(files: usize, names: usize, kek: &str) {
    println!(
        "Shredded {files} file(s) ({names} name(s)): their wrapped DEKs are deleted (checked: none is left in the \
         store), the KEK was rotated to {kek} and the store's write-ahead log truncated. Copies of CIPHERDIR \
         taken before now still hold the old keys (docs/SECURITY.md)."
    );
}

fn print_root_report(destroyed: Option<String>, kept: Option<String>) {
    match (destroyed, kept) {
        (Some(done), _) => println!("Root key: {done}."),
        (None, Some(why)) => println!("Root key kept: {why}."),
        _ => {}
    }
}

/// The control socket of the daemon serving the volume, if it is mounted.
/// (The socket is found by the header's volume id; the daemon answers only if it serves
/// `cipherdir`, so a header given another volume's id does not reach that volume.)
fn daemon_of(cipherdir: &Path, header: &envelopefs::format::VolumeHeader) -> Option<PathBuf> {
    let sock = control::socket_path(&header.volume_id);
    control::query(&sock, &control::request_for(cipherdir, "status")).filter(|v| v["error"].is_null()).map(|_| sock)
}

/// `shred` on a mounted volume: through its daemon (which holds the keys) and its mount.
fn shred_mounted(
    cipherdir: &Path,
    sock: &Path,
    volume: bool,
    files: &[PathBuf],
    (destroy_root, delete_root_after): (bool, Option<u32>),
    pass: PassArgs,
) -> Result<()> {
    let no_answer = || Error::Fuse("the mount's daemon did not answer".into());
    let status = control::query(sock, &control::request_for(cipherdir, "status")).ok_or_else(no_answer)?;
    let mountpoint = PathBuf::from(status["mountpoint"].as_str().unwrap_or_default());
    if volume {
        let started = std::time::Instant::now();
        let mut req = control::request_for(cipherdir, "shred-volume");
        req["delete_root_after"] = delete_root_after.into();
        req["destroy_root"] = destroy_root.into();
        let v = control::query(sock, &req).ok_or_else(no_answer)?;
        let v = control::reply_result(v)?;
        println!(
            "Volume {} shredded in {:.3?}: every wrapped KEK copy destroyed; unmounting {}.",
            status["volume_id"].as_str().unwrap_or("?"),
            started.elapsed(),
            mountpoint.display()
        );
        print_root_report(v["root_destroyed"].as_str().map(str::to_owned), v["root_kept"].as_str().map(str::to_owned));
        if let Some(n) = v["tenants"].as_u64().filter(|&n| n > 0) {
            println!("Its {n} tenant volume(s) shredded too (their roots are kept).");
        }
        for failed in v["tenants_failed"].as_array().into_iter().flatten().filter_map(|f| f.as_str()) {
            println!("Not shredded: {failed}");
        }
        if let Err(e) = envelopefs::daemon::unmount(&mountpoint, std::time::Duration::from_secs(30)) {
            // Files are open: detach the mount now; the daemon (and its keys in memory) goes
            // when the last of them is closed.
            envelopefs::daemon::unmount_lazy(&mountpoint)?;
            println!("{e}; detached the mount lazily: its daemon exits when the last open file is closed.");
        }
        return Ok(());
    }
    if status["root_rotated_since_mount"].as_bool() == Some(true) {
        return Err(Error::Busy {
            path: cipherdir.to_path_buf(),
            reason: "the root key was rotated since this volume was mounted: remount before shredding files \
                     (the KEK rotation that follows needs the new root); nothing was deleted"
                .into(),
        });
    }
    // The daemon checks first (regular files, not open, every hard link named); deleting
    // through the mount keeps the kernel's caches right; then the daemon commits, verifies
    // that no wrapped DEK is left, rotates the KEK and truncates the WAL.
    let _ = pass;
    let paths: Vec<String> = files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
    let mut req = control::request_for(cipherdir, "shred-check");
    req["paths"] = paths.into();
    let checked = control::query(sock, &req);
    let checked = control::reply_result(checked.ok_or_else(no_answer)?)?;
    let mut names = 0;
    let mut seen = std::collections::HashSet::new();
    for f in files {
        let p = mountpoint.join(f.strip_prefix("/").unwrap_or(f));
        if seen.insert(p.clone()) {
            unlink_beneath(&mountpoint, f).map_err(|e| Error::io(&p, "delete", e))?;
            names += 1;
        }
    }
    let mut req = control::request_for(cipherdir, "shred-finish");
    req["ids"] = checked["ids"].clone();
    req["names"] = names.into();
    let v = control::reply_result(control::query(sock, &req).ok_or_else(no_answer)?)?;
    print_file_shred(v["files"].as_u64().unwrap_or(0) as usize, names, v["kek_id"].as_str().unwrap_or("?"));
    let left: Vec<String> =
        v["left"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(String::from)).collect();
    rotation_left(cipherdir, &left)
}

/// Unlinks `rel` (a path inside the mount) walking from `mountpoint` one directory at a time
/// without following a symlink: a directory swapped for a symlink by another user of the
/// mount after the daemon's check cannot send this (root's) unlink outside the mount.
fn unlink_beneath(mountpoint: &Path, rel: &Path) -> std::io::Result<()> {
    use nix::fcntl::{openat, OFlag};
    use std::path::Component;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = std::fs::File::open(mountpoint)?;
    let parts: Vec<_> = rel.components().filter(|c| !matches!(c, Component::RootDir | Component::CurDir)).collect();
    let Some((last, dirs)) = parts.split_last() else { return Err(std::io::ErrorKind::InvalidInput.into()) };
    for c in dirs {
        let Component::Normal(name) = c else { return Err(std::io::ErrorKind::InvalidInput.into()) };
        dir = std::fs::File::from(openat(&dir, *name, flags, nix::sys::stat::Mode::empty())?);
    }
    nix::unistd::unlinkat(&dir, last.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(Into::into)
}

/// A KEK rotation walks every name: on a volume whose last mount (or command) did not end,
/// the leftovers a mount's recovery binds (a hard link whose row a power cut lost) would be
/// left as found, an integrity error. It is not run there; the recovery is not run by it
/// either (it accepts a set of files the crash cut, which a rotation must never launder).
fn refuse_before_recovery(vol: &Volume, shown: &Path) -> Result<()> {
    if !vol.needs_recovery() {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{}: was not unmounted cleanly: mount it once (its recovery runs first) or run `envelopefs fsck --repair`, then rotate",
        shown.display()
    )))
}

fn rotate_kek(cipherdir: &Path, pass: PassArgs) -> Result<()> {
    // A mounted volume rotates inside its daemon (which holds the keys), while in use.
    let header = Volume::read_live_header(cipherdir)?;
    let mut progress = Progress::new("rotate-kek");
    let mut stage = String::new();
    let asked = control::query_with_progress(
        &control::socket_path(&header.volume_id),
        &control::request_for(cipherdir, "rotate-kek"),
        &mut |p| {
            let now = p["stage"].as_str().unwrap_or_default();
            if now != stage {
                stage = now.to_string();
                match now {
                    "deks" => progress.stage("re-wrapping DEKs (in the mount's daemon)", p["total"].as_u64()),
                    _ => progress.stage("moving names to the new name key (in the mount's daemon)", None),
                }
            }
            progress.set(p["done"].as_u64().unwrap_or(0));
        },
    );
    if let Some(v) = asked {
        progress.finish();
        let v = control::reply_result(v)?;
        println!(
            "KEK and name key rotated while mounted: {} -> {} (no data rewritten).",
            v["old_kek_id"].as_str().unwrap_or("?"),
            v["kek_id"].as_str().unwrap_or("?")
        );
        let left: Vec<String> =
            v["left"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(String::from)).collect();
        return rotation_left(cipherdir, &left);
    }
    // Before any thread starts (the volume's own among them).
    envelopefs::progress::resumable_on_interrupt(&format!(
        "a rotation cut short is finished by running `envelopefs rotate {} --kek` again",
        cipherdir.display()
    ));
    let _lock = envelopefs::daemon::lock_volume(cipherdir)?;
    let header = Volume::read_live_header(cipherdir)?;
    let kms = kms::open(&header.kms_uri, cipherdir, &pass.source())?;
    let old = hex(&header.kek_id);
    let vol = Volume::open_with_kms(cipherdir, header, &kms)?;
    if vol.finished_rotation_at_open() {
        // The open finished a rotation a crash had cut short: that is the rotation asked for.
        println!(
            "KEK and name key rotated: {old} -> {} (an interrupted rotation finished; no data rewritten).",
            hex(&vol.header().kek_id)
        );
        return rotation_left(cipherdir, &vol.rotation_left());
    }
    refuse_before_recovery(&vol, cipherdir)?;
    let mut last = None;
    let new = vol.rotate_kek(&kms, &mut |step, done, total| {
        if last != Some(step) {
            last = Some(step);
            match step {
                RotationStep::Deks => progress.stage("re-wrapping DEKs", Some(total)),
                RotationStep::Names => progress.stage("moving names to the new name key", None),
            }
        }
        progress.set(done);
    })?;
    progress.finish();
    println!("KEK and name key rotated: {old} -> {} (no data rewritten).", hex(&new.kek_id));
    rotation_left(cipherdir, &vol.rotation_left())
}

/// A rotation that left things as it found them (they authenticate under neither key) says
/// which, and fails: the rotation is done, but those are integrity errors to look at.
fn rotation_left(cipherdir: &Path, left: &[String]) -> Result<()> {
    if left.is_empty() {
        return Ok(());
    }
    for l in left {
        eprintln!("left as found: {l}");
    }
    Err(envelopefs::Error::integrity(
        cipherdir,
        format!(
            "the rotation is done, but {} item(s) authenticate under neither the old nor the new keys and were left as \
             found (listed above)",
            left.len()
        ),
    ))
}

/// Applies `-o` options; generic fstab options are accepted and ignored.
/// A `DURATION` argument (`envelopefs::revocation::parse_duration`).
fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    envelopefs::revocation::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_mount_options(options: &[String], req: &mut MountRequest, pass: &mut PassArgs) -> Result<()> {
    const IGNORED: &[&str] = &[
        "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "exec", "noexec", "dev", "nodev",
        "suid", "nosuid", "atime", "noatime", "relatime", "async",
    ];
    for opt in options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            None if opt == "ro" => req.read_only = true,
            None if opt == "rw" => req.read_only = false,
            None if opt == "allow_other" => req.allow_other = true,
            None if opt == "io_uring" => req.io_uring = true,
            Some(("passfile", f)) => pass.passfile = Some(PathBuf::from(f)),
            Some(("tenant_passfile", f)) => req.tenant_passfiles.push(f.parse()?),
            Some(("idle", d)) => req.idle = Some(envelopefs::revocation::parse_duration(d)?).filter(|d| !d.is_zero()),
            Some(("recheck_root", d)) => {
                let d = envelopefs::revocation::parse_duration(d)?;
                req.recheck = envelopefs::revocation::Policy::new(d, req.recheck.grace)?;
            }
            Some(("offline_grace", d)) => {
                let g = envelopefs::revocation::parse_duration(d)?;
                req.recheck = envelopefs::revocation::Policy::new(req.recheck.interval.unwrap_or_default(), g)?;
            }
            _ if IGNORED.contains(&opt) || opt.starts_with("x-") || opt.starts_with("comment=") => {}
            _ => return Err(Error::InvalidArgument(format!("unknown mount option {opt:?}"))),
        }
    }
    Ok(())
}

fn mount(req: MountRequest, foreground: bool, daemon_child: bool, pass: PassArgs) -> Result<()> {
    if daemon_child {
        // Detached: our own session, no terminal. Errors before "ready" go back to the
        // waiting parent through stdout, the status pipe; nothing else is written there.
        let _ = nix::unistd::setsid();
        let out = std::io::stdout().as_fd().try_clone_to_owned().map_err(|e| Error::io("", "status pipe", e))?;
        let mut status = Some(envelopefs::daemon::StatusPipe::new(std::fs::File::from(out)));
        let result = envelopefs::daemon::secret_from_stdin().and_then(|secrets| {
            envelopefs::daemon::serve(&req, secrets, || {
                if let Some(s) = status.take() {
                    s.ready();
                }
            })
        });
        if let (Err(e), Some(s)) = (&result, status.take()) {
            s.failed(e);
        }
        return result;
    }
    let req = envelopefs::daemon::preflight(&req)?;
    if foreground {
        return envelopefs::daemon::serve(&req, Box::new(pass.source()), || {
            eprintln!("envelopefs: {} mounted on {}", req.cipherdir.display(), req.mountpoint.display());
            envelopefs::sys::notify_ready(); // systemd's Type=notify (envelopefs@.service)
        });
    }
    // The one secret the root needs goes to the daemon through a pipe: the keystore's
    // passphrase or the token's PIN (AWS KMS credentials come from the environment).
    let header = Volume::read_header(&req.cipherdir)?;
    // Before any prompt: a PIN typed for a root the operator never named would go to it.
    kms::check_root(&header.kms_uri, &req.cipherdir)?;
    let passphrase = match kms::KmsUri::parse(&header.kms_uri)? {
        kms::KmsUri::Local(_) => {
            let keystore = kms::local_keystore_path(&header.kms_uri, &req.cipherdir)?;
            Some(envelopefs::secret::Secrets::passphrase(&pass.source(), &keystore, false)?)
        }
        kms::KmsUri::Pkcs11 { token, .. } => Some(envelopefs::secret::Secrets::pin(&pass.source(), &token)?),
        kms::KmsUri::AwsKms(_) => None,
    };
    let mut args: Vec<OsString> = vec!["mount".into(), req.cipherdir.clone().into(), req.mountpoint.clone().into()];
    args.extend(["--foreground".into(), "--daemon-child".into(), "--threads".into(), req.threads.to_string().into()]);
    if req.read_only {
        args.push("--read-only".into());
    }
    if req.io_uring {
        args.push("--io-uring".into());
    }
    if req.allow_other {
        args.extend(["-o".into(), "allow_other".into()]);
    }
    for dir in &req.scratch {
        args.extend(["--scratch".into(), dir.clone().into()]);
    }
    if let Some(idle) = req.idle {
        args.extend(["--idle".into(), format!("{}ms", idle.as_millis()).into()]);
    }
    for p in &req.tenant_passfiles {
        args.extend(["--tenant-passfile".into(), format!("/{}={}", p.dir.display(), p.file.display()).into()]);
    }
    let every = req.recheck.interval.unwrap_or_default();
    args.extend(["--recheck-root".into(), format!("{}ms", every.as_millis()).into()]);
    args.extend(["--offline-grace".into(), format!("{}ms", req.recheck.grace.as_millis()).into()]);
    if envelopefs::anchor::accepts_rollback() {
        args.push("--accept-rollback".into());
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("", "find own executable", e))?;
    control::ensure_runtime_dir()?;
    envelopefs::daemon::spawn_daemon(&exe, &args, passphrase.as_ref(), &control::log_path(&header.volume_id))?;
    if req.io_uring {
        // Mounted either way; say so if the rings were refused (the daemon logs why too).
        let asked = control::request_for(&req.cipherdir, "status");
        let v = control::query(&control::socket_path(&header.volume_id), &asked).unwrap_or_default();
        if let Some(why) = v["transport"]["io_uring_refused"].as_str() {
            eprintln!("envelopefs: --io-uring: {why}; serving over /dev/fuse");
        }
    }
    Ok(())
}

/// `status CIPHERDIR|MOUNTPOINT`: from the daemon when mounted, else from disk.
fn status(target: &Path, json: bool) -> Result<()> {
    let cipherdir = target
        .canonicalize()
        .ok()
        .and_then(|t| envelopefs::daemon::mount_source(&t))
        .filter(|src| src.join(envelopefs::fs::HEADER_FILE).exists())
        .unwrap_or_else(|| target.to_path_buf());
    let v = envelopefs::control::status(&cipherdir)?;
    if json {
        println!("{v:#}");
        return Ok(());
    }
    print!("{}", envelopefs::status_view::render(&v));
    Ok(())
}

fn upgrade(cipherdir: &Path, pass: &PassArgs) -> Result<()> {
    envelopefs::progress::resumable_on_interrupt(&format!(
        "every file converted so far stays converted; run `envelopefs upgrade {}` again to finish",
        cipherdir.display()
    ));
    let _lock = envelopefs::daemon::lock_volume(cipherdir)?;
    let vol = Volume::open(cipherdir, &pass.source())?;
    let mut progress = Progress::new("upgrade");
    progress.stage("converting files to format 2", None);
    let report = vol.upgrade_to_pages(&mut |_| progress.inc())?;
    progress.finish();
    println!(
        "{}: format 2; {} files converted now, {} already converted.",
        cipherdir.display(),
        report.converted,
        report.already
    );
    if report.left.is_empty() {
        return Ok(());
    }
    for l in &report.left {
        eprintln!("not converted: {l}");
    }
    Err(Error::integrity(
        cipherdir,
        format!(
            "{} item(s) could not be converted (listed above) and were left as they are; run `envelopefs upgrade` \
             again once they are fixed",
            report.left.len()
        ),
    ))
}

fn fsck(cipherdir: &Path, repair: bool, pass: &PassArgs, tenant_pass: &TenantPassArgs) -> Result<()> {
    let _lock = envelopefs::daemon::lock_volume(cipherdir)?;
    let vol = Volume::open(cipherdir, &pass.source())?;
    let mut left = print_fsck(cipherdir, "", &checked(&vol, repair, "checking files")?);
    for f in envelopefs::tenant::check(&vol, repair)? {
        println!("{}", f.what);
        match f.repaired {
            Some(done) if !done.starts_with("not repaired") => println!("  repaired: {done}"),
            other => {
                if let Some(why) = other {
                    println!("  {why}");
                }
                left += 1;
            }
        }
    }
    // Each tenant is a volume of its own, checked with its own keys.
    let pins = pass.source();
    for entry in vol.tenants()? {
        let what = format!("checking tenant {}", entry.label);
        let checked = envelopefs::tenant::open(&vol, &entry, &tenant_pass.with(&pins))
            .and_then(|t| checked(&t.vol, repair, &what));
        match checked {
            Ok(report) => left += print_fsck(cipherdir, &format!("tenant {}: ", entry.label), &report),
            Err(e) => {
                println!("tenant {} ({}): cannot be checked: {e}", entry.label, hex(&entry.id));
                left += 1;
            }
        }
    }
    match left {
        0 => Ok(()),
        count => Err(Error::Unrepaired { path: cipherdir.to_path_buf(), count }),
    }
}

/// `fsck` of `vol` with its progress (files checked of those the store records).
fn checked(vol: &Volume, repair: bool, what: &str) -> Result<envelopefs::fs::FsckReport> {
    let total = vol.live_stats().ok().map(|s| s.files);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut progress = Progress::new("fsck");
            progress.stage(what, total);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                progress.set(vol.files_checked());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            progress.set(vol.files_checked());
            progress.finish();
        });
        let report = vol.fsck(repair);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        report
    })
}

/// Prints one volume's fsck report (`what` names a tenant); returns its unrepaired problems.
fn print_fsck(cipherdir: &Path, what: &str, report: &envelopefs::fs::FsckReport) -> usize {
    if report.unclean {
        println!("{what}{}: was not unmounted cleanly (a mount was killed or crashed)", cipherdir.display());
    }
    for p in &report.problems {
        let leftover = if p.crash_leftover { " (crash leftover)" } else { "" };
        println!("{what}{}: {}{leftover}: {}", p.path.display(), p.kind.name(), p.detail);
        if let Some(done) = &p.repaired {
            println!("  repaired: {done}");
        }
    }
    for s in &report.skipped_scratch {
        println!("/{}: scratch directory, not checked", s.display());
    }
    println!(
        "{what}{}: {} directories, {} files, {} blocks checked; {} problem(s), {} repaired; {} in lost+found",
        cipherdir.display(),
        report.dirs,
        report.files,
        report.blocks,
        report.problems.len(),
        report.problems.iter().filter(|p| p.repaired.is_some()).count(),
        report.lost_found
    );
    report.problems.iter().filter(|p| p.repaired.is_none()).count()
}

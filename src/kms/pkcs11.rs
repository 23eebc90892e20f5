//! PKCS#11 roots (`pkcs11:module=PATH;token=LABEL;object=KEYLABEL`): an AES-256 key object in
//! an HSM token wraps the KEK with AES-GCM inside the token; the key never leaves it.
//!
//! Wrapped form: `iv (12, from our CSPRNG) || ciphertext || tag (16)`, AAD = the KMS context
//! (volume id, purpose). The root is generated in the token by `init --create-key` as
//! `Token`, `Private`, `Sensitive` and not `Extractable`. PKCS#11 is initialised once per
//! process and module, so every root of one module in a process shares that context.
//!
//! The token also keeps each volume's anchor (`anchor.rs`): a private data object labelled
//! `envelopefs-anchor-VOLUMEID`, whose value is the anchor's text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use zeroize::Zeroizing;

use super::{Kms, KmsContext, KmsError};
use crate::crypto::{random_array, Key256};
use crate::secret::Secrets;
use crate::{Error, Result};

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// The process's PKCS#11 contexts, one per module.
fn context(module: &Path, uri: &str) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    let kms_err = |reason: String| Error::Kms { uri: uri.into(), reason };
    if !module.exists() {
        return Err(kms_err(format!(
            "PKCS#11 module {} does not exist (for SoftHSM2: apt-get install softhsm2)",
            module.display()
        )));
    }
    let ctx =
        Pkcs11::new(module).map_err(|e| kms_err(format!("cannot load PKCS#11 module {}: {e}", module.display())))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(kms_err(format!("cannot initialise PKCS#11 module {}: {e}", module.display()))),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

pub struct Pkcs11Root {
    uri: String,
    token: String,
    object: String,
    key: ObjectHandle,
    session: Mutex<Session>,
}

impl std::fmt::Debug for Pkcs11Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Root").field("uri", &self.uri).finish_non_exhaustive()
    }
}

impl Pkcs11Root {
    /// Logs in to `token` (PIN from `secrets`) and finds the AES key labelled `object`, or
    /// generates it when `create` (refusing to replace an existing one).
    pub fn open(
        uri: &str,
        module: &Path,
        token: &str,
        object: &str,
        secrets: &dyn Secrets,
        create: bool,
    ) -> Result<Pkcs11Root> {
        let kms_err = |reason: String| Error::Kms { uri: uri.into(), reason };
        let ctx = context(module, uri)?;
        let slots = ctx.get_slots_with_token().map_err(|e| kms_err(format!("listing tokens: {e}")))?;
        let mut labels = Vec::new();
        let mut slot = None;
        for s in slots {
            if let Ok(info) = ctx.get_token_info(s) {
                if info.label().trim_end() == token {
                    slot = Some(s);
                }
                labels.push(info.label().trim_end().to_string());
            }
        }
        let slot = slot.ok_or_else(|| {
            kms_err(format!("no token labelled {token:?} in {} (tokens: {})", module.display(), labels.join(", ")))
        })?;
        let session = ctx.open_rw_session(slot).map_err(|e| kms_err(format!("opening a session: {e}")))?;
        let pin = secrets.pin(token)?;
        let raw = cryptoki::types::RawAuthPin::new(Box::new(pin.expose().to_vec()));
        match session.login_with_raw(UserType::User, &raw) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(kms_err(format!("wrong PIN for token {token:?}")))
            }
            Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
                return Err(kms_err(format!("the user PIN of token {token:?} is locked")))
            }
            Err(e) => return Err(kms_err(format!("login to token {token:?} failed: {e}"))),
        }
        let found = find_key(&session, object).map_err(|e| kms_err(format!("finding key {object:?}: {e}")))?;
        let key = match (found, create) {
            (Some(_), true) => {
                return Err(kms_err(format!(
                    "token {token:?} already has a key labelled {object:?}: use it (omit --create-key) or pick another label"
                )))
            }
            (Some(k), false) => k,
            (None, true) => generate_key(&session, object).map_err(|e| kms_err(format!("generating key: {e}")))?,
            (None, false) => {
                return Err(kms_err(format!(
                    "token {token:?} has no AES key labelled {object:?} (init --create-key makes one)"
                )))
            }
        };
        Ok(Pkcs11Root {
            uri: uri.into(),
            token: token.into(),
            object: object.into(),
            key,
            session: Mutex::new(session),
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// AES-GCM decrypts `wrapped` (`iv || ciphertext || tag`) under the root, errors told
    /// apart by `why`.
    fn decrypt(
        &self,
        wrapped: &[u8],
        ctx: &KmsContext,
        why: fn(P11Error) -> KmsError,
    ) -> std::result::Result<Zeroizing<Vec<u8>>, KmsError> {
        if wrapped.len() != IV_LEN + 32 + 16 {
            return Err(KmsError::Rejected(format!("a wrapped key is {} bytes, not {}", wrapped.len(), IV_LEN + 48)));
        }
        let mut iv: [u8; IV_LEN] = wrapped[..IV_LEN].try_into().expect("length checked");
        let aad = ctx.aad();
        let params =
            GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(|e| KmsError::Unavailable(e.to_string()))?;
        let plain = self.session().decrypt(&Mechanism::AesGcm(params), self.key, &wrapped[IV_LEN..]).map_err(why)?;
        Ok(Zeroizing::new(plain))
    }
}

/// A re-check's decrypt: the key is the one the mount opened and the wrapped KEK opened under
/// it then, so a general error (what SoftHSM says for a bad tag) is the token failing now;
/// a key that may no longer be used is a revocation ([`classify`]).
fn classify_recheck(e: P11Error) -> KmsError {
    match e {
        P11Error::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _) => KmsError::Unavailable(e.to_string()),
        other => classify(other),
    }
}

fn find_key(session: &Session, label: &str) -> cryptoki::error::Result<Option<ObjectHandle>> {
    let found = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())])?;
    Ok(found.into_iter().next())
}

fn generate_key(session: &Session, label: &str) -> cryptoki::error::Result<ObjectHandle> {
    session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(32u64.into()),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )
}

/// The label of volume `volume_id`'s anchor object: `envelopefs-anchor-` and the volume id in
/// hex (a private data object of application `envelopefs`).
fn anchor_label(volume_id: &[u8; 16]) -> String {
    format!("envelopefs-anchor-{}", crate::format::hex(volume_id))
}

fn find_anchors(session: &Session, volume_id: &[u8; 16]) -> cryptoki::error::Result<Vec<ObjectHandle>> {
    session.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(b"envelopefs".to_vec()),
        Attribute::Label(anchor_label(volume_id).into_bytes()),
    ])
}

/// An anchor call the token could not serve now (the device or session went away: retried),
/// or refused (anything else, such as a full or read-only token: final).
fn classify_anchor(e: P11Error) -> KmsError {
    let reason = format!("the token's anchor object (a data object labelled envelopefs-anchor-…): {e}");
    match e {
        P11Error::Pkcs11(
            RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid,
            _,
        ) => KmsError::Unavailable(reason),
        _ => KmsError::Rejected(reason),
    }
}

/// Errors from the token: a refusal of the data (bad tag: SoftHSM reports
/// CKR_GENERAL_ERROR) or the token being unusable.
fn classify(e: P11Error) -> KmsError {
    match e {
        P11Error::Pkcs11(
            RvError::GeneralError
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange,
            _,
        ) => KmsError::Rejected(format!("the wrapped key does not authenticate under this HSM key ({e})")),
        // The key is gone, or may no longer decrypt, or the session lost its login: what a
        // revocation looks like from here (a mount goes dark at once, not after a grace).
        P11Error::Pkcs11(
            RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
            | RvError::KeyFunctionNotPermitted
            | RvError::KeyTypeInconsistent
            | RvError::UserNotLoggedIn,
            _,
        ) => KmsError::Rejected(format!("the HSM key may no longer be used ({e})")),
        other => KmsError::Unavailable(other.to_string()),
    }
}

impl Kms for Pkcs11Root {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn key_id(&self) -> String {
        format!("{}/{}", self.token, self.object)
    }

    fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError> {
        let mut iv: [u8; IV_LEN] = random_array();
        let aad = ctx.aad();
        let mut out = iv.to_vec();
        let params =
            GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(|e| KmsError::Unavailable(e.to_string()))?;
        let sealed = self.session().encrypt(&Mechanism::AesGcm(params), self.key, key.expose()).map_err(classify)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError> {
        let plain = self.decrypt(wrapped, ctx, classify)?;
        super::key_from_unwrapped(&plain, "the HSM")
    }

    /// Looks the key object up by its label again (a token tells another process's
    /// deletion only to a new search; the handle found at open may still answer from the
    /// session's cache) and unwraps the KEK with what it finds. No key by that label, or
    /// another key object in its place, is a revocation.
    fn recheck(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<(), KmsError> {
        // A search that fails is the token failing (worth another try), not an answer.
        let found = find_key(&self.session(), &self.object)
            .map_err(|e| KmsError::Unavailable(format!("finding key object {:?}: {e}", self.object)))?;
        match found {
            None => Err(KmsError::Rejected(format!(
                "token {:?} has no key object labelled {:?} any more",
                self.token, self.object
            ))),
            Some(k) if k != self.key => Err(KmsError::Rejected(format!(
                "the key object labelled {:?} in token {:?} was replaced",
                self.object, self.token
            ))),
            Some(_) => self.decrypt(wrapped, ctx, classify_recheck).map(drop),
        }
    }

    /// Logs the session out: the token then decrypts nothing more for this process (the
    /// login is the application's, so every session of it loses it).
    fn disconnect(&self) {
        if let Err(e) = self.session().logout() {
            tracing::warn!("logging out of token {:?}: {e}", self.token);
        }
    }

    fn keeps_anchors(&self) -> bool {
        true
    }

    /// Every anchor object of the volume, newest last when a write was cut between making
    /// the new object and destroying the old one: the caller takes the highest of them.
    fn read_anchor(&self, volume_id: &[u8; 16]) -> std::result::Result<Option<Vec<u8>>, KmsError> {
        let session = self.session();
        let mut texts = Vec::new();
        for object in find_anchors(&session, volume_id).map_err(classify_anchor)? {
            match session.get_attributes(object, &[AttributeType::Value]).map_err(classify_anchor)?.pop() {
                Some(Attribute::Value(v)) => texts.push(v),
                _ => return Err(KmsError::Rejected("the token's anchor object has no value".into())),
            }
        }
        Ok((!texts.is_empty()).then(|| texts.join(&b"\n"[..])))
    }

    /// A token may not let a data object's value change (SoftHSM2 does not): the new anchor
    /// is a new object, and only once it exists are the old ones destroyed.
    fn write_anchor(&self, volume_id: &[u8; 16], text: &[u8]) -> std::result::Result<(), KmsError> {
        let session = self.session();
        let old = find_anchors(&session, volume_id).map_err(classify_anchor)?;
        session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Application(b"envelopefs".to_vec()),
                Attribute::Label(anchor_label(volume_id).into_bytes()),
                Attribute::Value(text.to_vec()),
            ])
            .map_err(classify_anchor)?;
        // The new object stands: an old one left behind is merged away by the next read, and
        // a retry would only add objects, so a failure here is final.
        for object in old {
            session
                .destroy_object(object)
                .map_err(|e| KmsError::Rejected(format!("the token's old anchor object stays: {e}")))?;
        }
        Ok(())
    }

    fn forget_anchor(&self, volume_id: &[u8; 16]) -> std::result::Result<bool, KmsError> {
        let session = self.session();
        let objects = find_anchors(&session, volume_id).map_err(classify_anchor)?;
        for &object in &objects {
            session.destroy_object(object).map_err(classify_anchor)?;
        }
        Ok(!objects.is_empty())
    }

    fn destroy_root(&self, _delete_after_days: Option<u32>) -> std::result::Result<Option<String>, KmsError> {
        self.session().destroy_object(self.key).map_err(|e| KmsError::Unavailable(e.to_string()))?;
        Ok(Some(format!("key object {:?} destroyed in token {:?}", self.object, self.token)))
    }
}

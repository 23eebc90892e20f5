//! AWS KMS API roots (`aws-kms:KEY_ID_OR_ARN`, cargo feature `aws-kms`): the KEK is wrapped
//! by KMS `Encrypt`/`Decrypt` under a symmetric key, with an encryption context naming the
//! volume and purpose (and boot, for the scratch key), so a wrapped key only decrypts for the
//! place it was made for.
//!
//! Credentials and endpoint come from the standard AWS chain (`AWS_ACCESS_KEY_ID`,
//! profiles, `AWS_REGION`, `AWS_ENDPOINT_URL_KMS`, …). Each call is bounded by the KMS
//! timeout; the SDK's own retries are off, since [`super::Audited`] retries.

use std::collections::HashMap;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use zeroize::Zeroizing;

use super::{Kms, KmsContext, KmsError, Purpose};
use crate::crypto::Key256;
use crate::format::hex;
use crate::{Error, Result};

pub struct AwsKmsRoot {
    uri: String,
    key: String,
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for AwsKmsRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsRoot").field("uri", &self.uri).finish_non_exhaustive()
    }
}

impl AwsKmsRoot {
    /// A client for `key` (`create`: make a new symmetric key and use its ARN; `uri` then
    /// becomes `aws-kms:ARN`). No network call is made unless `create`.
    pub fn open(uri: &str, key: &str, create: bool) -> Result<AwsKmsRoot> {
        let kms_err = |reason: String| Error::Kms { uri: uri.into(), reason };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| kms_err(format!("starting the AWS client runtime: {e}")))?;
        let t = super::timeout();
        let config = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder().connect_timeout(t).operation_timeout(t).build(),
                )
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .load(),
        );
        if config.region().is_none() {
            return Err(kms_err("no AWS region: set AWS_REGION (or a profile with a region)".into()));
        }
        let client = Client::new(&config);
        let mut root = AwsKmsRoot { uri: uri.into(), key: key.into(), client, rt };
        if create {
            let out = root
                .rt
                .block_on(root.client.create_key().description(format!("envelopefs root ({key})")).send())
                .map_err(|e| kms_err(format!("CreateKey: {}", classify(e))))?;
            let arn =
                out.key_metadata().and_then(|m| m.arn()).ok_or_else(|| kms_err("CreateKey returned no ARN".into()))?;
            root.key = arn.to_string();
            root.uri = format!("aws-kms:{arn}");
        }
        Ok(root)
    }

    /// The encryption context of a call: every field is checked by KMS on Decrypt.
    fn context(ctx: &KmsContext) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("envelopefs:volume".to_string(), hex(&ctx.volume_id));
        m.insert("envelopefs:purpose".to_string(), ctx.purpose.name().to_string());
        if ctx.generation != 0 {
            m.insert("envelopefs:kek-generation".to_string(), ctx.generation.to_string());
        }
        if let Purpose::Scratch { boot_id } = ctx.purpose {
            m.insert("envelopefs:boot".to_string(), hex(&boot_id));
        }
        m
    }
}

/// A refusal (bad ciphertext or context, unknown/disabled key, no permission) is final (and
/// a revocation, to a mounted volume's re-check); a network, timeout, throttling,
/// KMS-internal, clock-skew or expired-credentials failure is worth a retry.
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> KmsError {
    match &e {
        SdkError::ServiceError(se) => {
            let Some(code) = se.err().code().map(str::to_string) else {
                return KmsError::Rejected(aws_sdk_kms::error::DisplayErrorContext(&e).to_string());
            };
            let msg = se.err().message().unwrap_or_default().to_string();
            // Also a clock that drifted (the request's signature is judged stale) or expired
            // temporary credentials: the host's to fix, not a refusal of the key.
            if matches!(
                code.as_str(),
                "ThrottlingException"
                    | "KMSInternalException"
                    | "DependencyTimeoutException"
                    | "InvalidSignatureException"
                    | "ExpiredTokenException"
                    | "RequestExpired"
            ) {
                KmsError::Unavailable(format!("{code}: {msg}"))
            } else {
                KmsError::Rejected(format!("{code}: {msg}"))
            }
        }
        _ => KmsError::Unavailable(aws_sdk_kms::error::DisplayErrorContext(&e).to_string()),
    }
}

impl Kms for AwsKmsRoot {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn key_id(&self) -> String {
        self.key.clone()
    }

    fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError> {
        let req = self
            .client
            .encrypt()
            .key_id(&self.key)
            .plaintext(Blob::new(key.expose().to_vec()))
            .set_encryption_context(Some(Self::context(ctx)));
        let out = self.rt.block_on(req.send()).map_err(classify)?;
        out.ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| KmsError::Unavailable("Encrypt returned nothing".into()))
    }

    fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError> {
        let req = self
            .client
            .decrypt()
            .key_id(&self.key)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(Self::context(ctx)));
        let mut out = self.rt.block_on(req.send()).map_err(classify)?;
        let plain = Zeroizing::new(out.plaintext.take().map(Blob::into_inner).unwrap_or_default());
        super::key_from_unwrapped(&plain, "KMS")
    }

    fn destroy_root(&self, delete_after_days: Option<u32>) -> std::result::Result<Option<String>, KmsError> {
        let Some(days) = delete_after_days else { return Ok(None) };
        // Key deletion only works in the key's own account, where the bare key id names it
        // (and some KMS API servers only accept that form).
        let id = self.key.rsplit_once(":key/").map(|(_, id)| id).unwrap_or(&self.key);
        let req = self.client.schedule_key_deletion().key_id(id).pending_window_in_days(days as i32);
        let out = self.rt.block_on(req.send()).map_err(classify)?;
        let when = out.deletion_date().map(|d| d.to_string()).unwrap_or_else(|| format!("in {days} days"));
        Ok(Some(format!("deletion of KMS key {} scheduled ({when})", self.key)))
    }
}

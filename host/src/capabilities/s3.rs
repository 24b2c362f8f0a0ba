//! `warden:policy/s3` (grants "s3:head", "s3:list"): the granted bucket only.
//!
//! The bucket is the host's (named in `schedules.toml`, never by the guest); the key or prefix
//! is the guest's, and is refused when it could name another bucket on a server or proxy that
//! normalises paths (a `.` or `..` segment, a leading `/`), carries control characters, or
//! is longer than S3 allows (1024 bytes).

use std::time::Duration;

use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::s3::{Host, Object};

const S3_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_LIST: u32 = 1000;
const MAX_KEY_BYTES: usize = 1024;

/// A key or prefix that stays inside the bucket, or why not.
pub fn checked_key(key: &str) -> Result<&str, String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("refused: the key is {} bytes, over {MAX_KEY_BYTES}", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err("refused: a control character in the key".into());
    }
    if key.starts_with('/') || key.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(format!("refused: `{key}` could leave the bucket (a leading `/` or a `.`/`..` segment)"));
    }
    Ok(key)
}

impl Host for PluginCtx {
    async fn head(&mut self, key: String) -> wasmtime::Result<Result<Option<u64>, String>> {
        if !self.grants.s3_head {
            return Ok(Err("s3:head is not granted to this policy (add \"s3:head\" to its `grants`)".into()));
        }
        let Some(bucket) = self.caps.s3.clone() else {
            return Ok(Err("no S3 bucket is configured (targets.s3)".into()));
        };
        if let Err(refused) = checked_key(&key) {
            return Ok(Err(refused));
        }
        let call = bucket.client.head_object().bucket(&bucket.bucket).key(&key).send();
        Ok(match tokio::time::timeout(S3_TIMEOUT, call).await {
            Err(_) => Err("S3 head timed out".into()),
            Ok(Ok(out)) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Ok(Err(e)) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Ok(Err(e)) => Err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
        })
    }

    async fn list_objects(&mut self, prefix: String, limit: u32) -> wasmtime::Result<Result<Vec<Object>, String>> {
        if !self.grants.s3_list {
            return Ok(Err("s3:list is not granted to this policy (add \"s3:list\" to its `grants`)".into()));
        }
        let Some(bucket) = self.caps.s3.clone() else {
            return Ok(Err("no S3 bucket is configured (targets.s3)".into()));
        };
        if let Err(refused) = checked_key(&prefix) {
            return Ok(Err(refused));
        }
        let call = bucket
            .client
            .list_objects_v2()
            .bucket(&bucket.bucket)
            .prefix(prefix)
            .max_keys(i32::try_from(limit.min(MAX_LIST)).unwrap_or(1000))
            .send();
        Ok(match tokio::time::timeout(S3_TIMEOUT, call).await {
            Err(_) => Err("S3 list timed out".into()),
            Ok(Err(e)) => Err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
            Ok(Ok(out)) => Ok(out
                .contents()
                .iter()
                .map(|o| Object {
                    key: o.key().unwrap_or_default().to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                })
                .collect()),
        })
    }
}

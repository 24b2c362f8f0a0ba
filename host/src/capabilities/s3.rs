//! `warden:policy/s3` (grants "s3:head", "s3:list"): the configured bucket only.

use std::time::Duration;

use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::s3::{Host, Object};

const S3_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_LIST: u32 = 1000;

impl Host for PluginCtx {
    async fn head(&mut self, key: String) -> wasmtime::Result<Result<Option<u64>, String>> {
        if !self.grants.s3_head {
            return Ok(Err("s3:head is not granted to this policy (add \"s3:head\" to its `grants`)".into()));
        }
        let Some(bucket) = self.caps.s3.clone() else {
            return Ok(Err("no S3 bucket is configured (targets.s3)".into()));
        };
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

//! The targets: the application's database and S3 bucket that warden watches and maintains.
//!
//! Architecture invariant: target handles are opened lazily, so warden starts and keeps
//! running while a target is down (that is what it reports); nothing here creates the
//! application's tables unless `targets.demo_schema` asks for the demo schema.

use std::sync::Arc;
use std::time::Duration;

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
use sqlx::migrate::Migrator;

use crate::config;
use crate::db::{Pool, PoolSettings};

mod checks;
pub mod policy;
pub use checks::{CheckConnections, Slot};
pub use policy::{PolicyDb, Verified};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("target database {url}: creating the demo schema failed: {source}")]
    Demo { url: String, source: sqlx::migrate::MigrateError },
}

/// Open handles to the targets.
#[derive(Debug, Clone)]
pub struct Targets {
    pub db: Pool,
    pub s3: Option<S3Bucket>,
    pub config: config::TargetsConfig,
    /// The `db` and `sql` checks' connections to `db`, one slot per connection of its pool: a
    /// check takes a slot before it starts its clock, so waiting for one is never counted as
    /// the target's time, nor as its failure.
    pub db_checks: Arc<CheckConnections>,
    /// `[targets.databases.NAME]`: each with a pool (and check connections) of its own.
    pub databases: Arc<std::collections::HashMap<String, (Pool, Arc<CheckConnections>)>>,
    /// `[targets.buckets.NAME]`.
    pub buckets: Arc<std::collections::HashMap<String, S3Bucket>>,
    /// The read-only pools policies' `sql:read` grants query through, by database (`None`:
    /// the default target); opened lazily, never the pools above.
    pub policy_dbs: Arc<std::collections::HashMap<Option<String>, PolicyDb>>,
}

/// The configured bucket and a client for it.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
}

impl Targets {
    /// The database a check names (`None`: the default target) and its checks' connections.
    pub fn database(&self, name: Option<&str>) -> Option<(&Pool, &Arc<CheckConnections>)> {
        match name {
            None => Some((&self.db, &self.db_checks)),
            Some(name) => self.databases.get(name).map(|(p, s)| (p, s)),
        }
    }

    /// The read-only pool a policy's `sql:read` grant reaches: the default target's, or the
    /// named database's of `sql:read:NAME`.
    pub fn granted_sql(&self, spec: &config::PolicySpec) -> Option<PolicyDb> {
        if !spec.grants.sql_read {
            return None;
        }
        self.policy_dbs.get(&spec.sql_database).cloned()
    }

    /// Checks the connection of every `sql:read` grant (`targets::policy`), once per
    /// database: each refusal as (policy, why). A database that does not answer within a few
    /// seconds is not refused here (its role is checked on every connection it opens), only
    /// logged.
    pub async fn verify_grants(&self, policies: &[config::PolicySpec], state: &config::DbUrl) -> Vec<(String, String)> {
        let mut verdicts: std::collections::HashMap<Option<String>, Option<String>> = Default::default();
        let mut refused = Vec::new();
        for spec in policies.iter().filter(|p| p.grants.sql_read && p.enabled) {
            if !verdicts.contains_key(&spec.sql_database) {
                let verdict = match (self.granted_sql(spec), self.url_of(spec.sql_database.as_deref())) {
                    (Some(db), Some(url)) => {
                        match tokio::time::timeout(Duration::from_secs(3), db.verify(url, state)).await {
                            Ok(Verified::Refused(why)) => Some(why),
                            Ok(Verified::Ok) => None,
                            Ok(Verified::Unreachable(e)) => {
                                tracing::warn!(policy = %spec.name, error = %e, "the sql:read grant's database did not answer; its role is checked when it does");
                                None
                            }
                            Err(_) => {
                                tracing::warn!(policy = %spec.name, "the sql:read grant's database did not answer in 3s; its role is checked when it does");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                verdicts.insert(spec.sql_database.clone(), verdict);
            }
            if let Some(Some(why)) = verdicts.get(&spec.sql_database) {
                refused.push((spec.name.clone(), why.clone()));
            }
        }
        refused
    }

    fn url_of(&self, name: Option<&str>) -> Option<&config::DbUrl> {
        match name {
            None => Some(&self.config.database),
            Some(name) => self.config.databases.iter().find(|d| d.name == name).map(|d| &d.url),
        }
    }

    /// The bucket a policy's `s3:head` / `s3:list` grant reaches.
    pub fn granted_bucket(&self, spec: &config::PolicySpec) -> Option<S3Bucket> {
        self.bucket(spec.s3_bucket.as_deref()).cloned()
    }

    /// The bucket a check names (`None`: the default one, if configured).
    pub fn bucket(&self, name: Option<&str>) -> Option<&S3Bucket> {
        match name {
            None => self.s3.as_ref(),
            Some(name) => self.buckets.get(name),
        }
    }

    /// Opens the target pool lazily and, when asked, creates the demo schema.
    pub async fn open(config: &config::TargetsConfig) -> Result<Self, TargetError> {
        let url = config.database.display();
        let settings = PoolSettings {
            max_connections: config.pool,
            acquire_timeout: Duration::from_secs(10),
            lazy: true,
            warden_owns: config.demo_schema,
        };
        let db = Pool::open(&config.database, settings, None)
            .await
            .map_err(|source| TargetError::Open { url: url.clone(), source })?;
        let db_checks = Arc::new(CheckConnections::new(db.clone(), config.pool as usize));
        let mut databases = std::collections::HashMap::new();
        let mut policy_dbs = std::collections::HashMap::new();
        let policy_db = |url: &config::DbUrl, policy_url: Option<&str>| {
            PolicyDb::open(url, policy_url).map_err(|source| TargetError::Open { url: url.display(), source })
        };
        policy_dbs.insert(None, policy_db(&config.database, config.policy_url.as_deref())?);
        for named in &config.databases {
            policy_dbs.insert(Some(named.name.clone()), policy_db(&named.url, named.policy_url.as_deref())?);
            let settings = PoolSettings {
                max_connections: named.pool,
                acquire_timeout: Duration::from_secs(10),
                lazy: true,
                warden_owns: false,
            };
            let pool = Pool::open(&named.url, settings, None)
                .await
                .map_err(|source| TargetError::Open { url: named.url.display(), source })?;
            let checks = Arc::new(CheckConnections::new(pool.clone(), named.pool as usize));
            databases.insert(named.name.clone(), (pool, checks));
        }
        let buckets = config.buckets.iter().map(|(name, b)| (name.clone(), S3Bucket::new(b))).collect();
        let targets = Self {
            db,
            s3: config.s3.as_ref().map(S3Bucket::new),
            config: config.clone(),
            db_checks,
            databases: Arc::new(databases),
            buckets: Arc::new(buckets),
            policy_dbs: Arc::new(policy_dbs),
        };
        if config.demo_schema {
            targets.create_demo_schema().await.map_err(|source| TargetError::Demo { url, source })?;
        }
        Ok(targets)
    }

    async fn create_demo_schema(&self) -> Result<(), sqlx::migrate::MigrateError> {
        // Versions 1001+ so the demo schema can share a SQLite file with warden's own tables.
        let mut sqlite: Migrator = sqlx::migrate!("../migrations/demo/sqlite");
        let mut postgres: Migrator = sqlx::migrate!("../migrations/demo/postgres");
        match &self.db {
            Pool::Sqlite(p) => sqlite.set_ignore_missing(true).run(p).await,
            Pool::Postgres(p) => postgres.set_ignore_missing(true).run(p).await,
        }
    }
}

impl S3Bucket {
    pub fn new(target: &config::S3Target) -> Self {
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(target.region.clone()))
            .force_path_style(target.path_style)
            // A probe reports what it sees now; the check's timeout bounds it.
            .retry_config(RetryConfig::disabled());
        builder = match &target.access_key {
            Some((id, secret)) => {
                builder.credentials_provider(Credentials::new(id, secret, None, None, "schedules.toml"))
            }
            None => builder.credentials_provider(EnvironmentVariableCredentialsProvider::new()),
        };
        if let Some(endpoint) = &target.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Self { client: aws_sdk_s3::Client::from_conf(builder.build()), bucket: target.bucket.clone() }
    }

    /// Connectivity: the bucket exists and the credentials may reach it.
    pub async fn head(&self) -> Result<(), String> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("S3 bucket `{}`: {}", self.bucket, aws_sdk_s3::error::DisplayErrorContext(e)))
    }
}

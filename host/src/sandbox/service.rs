//! Sandbox records, ownership and lifecycle, backed by the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use super::{ExecOutput, ExecRequest, SandboxDriver};
use crate::config::SandboxConfig;
use crate::error::{WharfError, WharfResult};
use crate::store::keys::new_id;
use crate::store::{Db, now_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    Creating,
    Running,
    Stopped,
    Failed,
    Deleted,
}

impl SandboxStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "deleted" => Self::Deleted,
            _ => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub owner: String,
    pub profile: String,
    pub driver: String,
    pub status: SandboxStatus,
    pub error_code: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The built-in profile served by the process driver.
pub const LOCAL_PROFILE: &str = "local";

pub struct Sandboxes {
    db: Db,
    drivers: HashMap<&'static str, Arc<dyn SandboxDriver>>,
    config: SandboxConfig,
}

/// One sandbox as a plugin call sees it: the `sandbox` imports are bound to it
/// and to nothing else.
#[derive(Clone)]
pub struct SandboxBinding {
    pub sandbox_id: String,
    driver: Arc<dyn SandboxDriver>,
    config: SandboxConfig,
}

impl SandboxBinding {
    pub fn driver(&self) -> &Arc<dyn SandboxDriver> {
        &self.driver
    }

    /// Applies the configured default and cap to a requested timeout.
    pub fn exec_timeout(&self, requested_ms: Option<u64>) -> Duration {
        let ms = requested_ms
            .unwrap_or(self.config.exec_default_timeout_ms)
            .min(self.config.exec_max_timeout_ms);
        Duration::from_millis(ms.max(1))
    }

    pub fn output_cap(&self) -> usize {
        self.config.exec_output_cap_bytes
    }

    pub async fn exec(&self, request: ExecRequest) -> WharfResult<ExecOutput> {
        self.driver.exec(&self.sandbox_id, request).await
    }
}

impl Sandboxes {
    pub fn new(db: Db, drivers: Vec<Arc<dyn SandboxDriver>>, config: SandboxConfig) -> Self {
        let drivers = drivers
            .into_iter()
            .map(|driver| (driver.name(), driver))
            .collect();
        Self {
            db,
            drivers,
            config,
        }
    }

    fn driver_for_profile(&self, profile: &str) -> WharfResult<&Arc<dyn SandboxDriver>> {
        let driver = match profile {
            LOCAL_PROFILE => "process",
            other => {
                return Err(WharfError::validation(format!(
                    "unknown sandbox profile {other:?}; known: local"
                )));
            }
        };
        self.drivers.get(driver).ok_or_else(|| {
            WharfError::validation(format!(
                "profile {profile:?} needs the {driver} driver, which is not available"
            ))
        })
    }

    pub async fn create(&self, owner: &str, profile: &str) -> WharfResult<Sandbox> {
        let driver = self.driver_for_profile(profile)?.clone();
        let now = now_rfc3339();
        let mut sandbox = Sandbox {
            id: new_id("sbx"),
            owner: owner.to_string(),
            profile: profile.to_string(),
            driver: driver.name().to_string(),
            status: SandboxStatus::Creating,
            error_code: None,
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO sandboxes (id, owner, profile, driver, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&sandbox.id)
            .bind(&sandbox.owner)
            .bind(&sandbox.profile)
            .bind(&sandbox.driver)
            .bind(sandbox.status.as_str())
            .bind(&sandbox.created_at)
            .bind(&sandbox.updated_at)
            .execute(&self.db)
            .await?;
        match driver.create(&sandbox.id).await {
            Ok(()) => {
                self.set_status(&mut sandbox, SandboxStatus::Running, None)
                    .await?
            }
            Err(err) => {
                self.set_status(&mut sandbox, SandboxStatus::Failed, Some(err.code.as_str()))
                    .await?;
                return Err(err);
            }
        }
        Ok(sandbox)
    }

    async fn set_status(
        &self,
        sandbox: &mut Sandbox,
        status: SandboxStatus,
        error_code: Option<&str>,
    ) -> WharfResult<()> {
        sandbox.status = status;
        sandbox.error_code = error_code.map(str::to_string);
        sandbox.updated_at = now_rfc3339();
        sqlx::query("UPDATE sandboxes SET status = ?, error_code = ?, updated_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(&sandbox.error_code)
            .bind(&sandbox.updated_at)
            .bind(&sandbox.id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// The caller's sandbox; another owner's is `not_found`, never `forbidden`.
    pub async fn get(&self, owner: &str, id: &str) -> WharfResult<Sandbox> {
        let row = sqlx::query(
            "SELECT * FROM sandboxes WHERE id = ? AND owner = ? AND status != 'deleted'",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.db)
        .await?
        .ok_or_else(|| WharfError::not_found(format!("sandbox {id}")))?;
        Ok(sandbox_from_row(&row))
    }

    pub async fn list(&self, owner: &str) -> WharfResult<Vec<Sandbox>> {
        let rows = sqlx::query("SELECT * FROM sandboxes WHERE owner = ? AND status != 'deleted' ORDER BY created_at, id")
            .bind(owner)
            .fetch_all(&self.db)
            .await?;
        Ok(rows.iter().map(sandbox_from_row).collect())
    }

    pub async fn delete(&self, owner: &str, id: &str) -> WharfResult<()> {
        let mut sandbox = self.get(owner, id).await?;
        self.driver_named(&sandbox.driver)?
            .destroy(&sandbox.id)
            .await?;
        self.set_status(&mut sandbox, SandboxStatus::Deleted, None)
            .await
    }

    fn driver_named(&self, name: &str) -> WharfResult<Arc<dyn SandboxDriver>> {
        self.drivers
            .get(name)
            .cloned()
            .ok_or_else(|| WharfError::internal(format!("driver {name} is not available")))
    }

    /// Binds a running sandbox for a plugin call.
    pub fn bind(&self, sandbox: &Sandbox) -> WharfResult<SandboxBinding> {
        if sandbox.status != SandboxStatus::Running {
            return Err(WharfError::new(
                crate::error::ErrorCode::Conflict,
                format!(
                    "sandbox {} is {:?}, not running",
                    sandbox.id, sandbox.status
                ),
            ));
        }
        Ok(SandboxBinding {
            sandbox_id: sandbox.id.clone(),
            driver: self.driver_named(&sandbox.driver)?,
            config: self.config.clone(),
        })
    }

    pub fn driver_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.drivers.keys().copied().collect();
        names.sort();
        names
    }
}

fn sandbox_from_row(row: &sqlx::sqlite::SqliteRow) -> Sandbox {
    Sandbox {
        id: row.get("id"),
        owner: row.get("owner"),
        profile: row.get("profile"),
        driver: row.get("driver"),
        status: SandboxStatus::parse(row.get::<&str, _>("status")),
        error_code: row.get("error_code"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

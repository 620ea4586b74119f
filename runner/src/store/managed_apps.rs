//! SQL for apps and deploys.

use sqlx::{any::AnyRow, Row};

use anyhow::Context;

use super::{moving, now_ms, state_in, Store, Written};
use crate::lifecycle::DeployState;

#[derive(Debug, Clone)]
pub struct ManagedAppRecord {
    pub name: String,
    pub spec: String,
    pub secrets: String,
    pub current_version: Option<String>,
    pub current_image: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every write of the definition: the compare-and-set token of
    /// [`Store::write_app`].
    pub revision: i64,
}

impl ManagedAppRecord {
    const COLUMNS: &'static str =
        "name, spec, secrets, current_version, current_image, created_at, updated_at, revision";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(ManagedAppRecord {
            name: r.try_get("name")?,
            spec: r.try_get("spec")?,
            secrets: r.try_get("secrets")?,
            current_version: r.try_get("current_version")?,
            current_image: r.try_get("current_image")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            revision: r.try_get("revision")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct DeployRecord {
    pub id: String,
    pub app: String,
    pub kind: String,
    pub version: String,
    pub image: Option<String>,
    pub state: DeployState,
    pub failure_reason: Option<String>,
    pub previous_version: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl DeployRecord {
    const COLUMNS: &'static str =
        "id, app, kind, version, image, state, failure_reason, previous_version, created_at, finished_at";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let state: String = r.try_get("state")?;
        Ok(DeployRecord {
            id: r.try_get("id")?,
            app: r.try_get("app")?,
            kind: r.try_get("kind")?,
            version: r.try_get("version")?,
            image: r.try_get("image")?,
            state: DeployState::parse(&state).with_context(|| format!("unknown deploy state {state:?}"))?,
            failure_reason: r.try_get("failure_reason")?,
            previous_version: r.try_get("previous_version")?,
            created_at: r.try_get("created_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    }
}

impl Store {
    /// Writes an app's definition if it is still as the caller read it: `read` is the revision
    /// read, or `None` when there was no such app. `Written::Conflict` means another write came
    /// first: read again, merge again, write again.
    pub async fn write_app(&self, name: &str, spec: &str, secrets: &str, read: Option<i64>) -> anyhow::Result<Written> {
        let now = now_ms();
        let done = match read {
            None => sqlx::query(
                "INSERT INTO apps (name, spec, secrets, created_at, updated_at, revision) \
                 VALUES ($1, $2, $3, $4, $4, 1) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(spec)
            .bind(secrets)
            .bind(now),
            Some(revision) => sqlx::query(
                "UPDATE apps SET spec = $2, secrets = $3, updated_at = $4, revision = revision + 1 \
                 WHERE name = $1 AND revision = $5",
            )
            .bind(name)
            .bind(spec)
            .bind(secrets)
            .bind(now)
            .bind(revision),
        }
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Written::from(read, done))
    }

    /// Records that an app's service failed (kept crashing) in a deploy.
    pub async fn record_service_failure(
        &self,
        app: &str,
        service: &str,
        deploy_id: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO app_service_failures (app, service, deploy_id, reason, failed_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (app, service) DO UPDATE SET deploy_id = $3, reason = $4, failed_at = $5",
        )
        .bind(app)
        .bind(service)
        .bind(deploy_id)
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The services of an app that failed in this deploy, with the reason.
    pub async fn service_failures(&self, app: &str, deploy_id: &str) -> anyhow::Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT service, reason FROM app_service_failures WHERE app = $1 AND deploy_id = $2")
            .bind(app)
            .bind(deploy_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("service")?, r.try_get("reason")?))).collect()
    }

    /// Replaces an app's stored secrets if they are still `old` (compare-and-set); whether they were.
    pub async fn replace_app_secrets(&self, name: &str, old: &str, new: &str) -> anyhow::Result<bool> {
        let done = sqlx::query("UPDATE apps SET secrets = $1 WHERE name = $2 AND secrets = $3")
            .bind(new)
            .bind(name)
            .bind(old)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done == 1)
    }

    pub async fn app(&self, name: &str) -> anyhow::Result<Option<ManagedAppRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM apps WHERE name = $1", ManagedAppRecord::COLUMNS))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| ManagedAppRecord::from_row(&r)).transpose()
    }

    pub async fn apps(&self) -> anyhow::Result<Vec<ManagedAppRecord>> {
        let rows = sqlx::query(&format!("SELECT {} FROM apps ORDER BY name", ManagedAppRecord::COLUMNS))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ManagedAppRecord::from_row).collect()
    }

    pub async fn set_app_current(&self, name: &str, version: &str, image: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE apps SET current_version = $1, current_image = $2, updated_at = $3 WHERE name = $4")
            .bind(version)
            .bind(image)
            .bind(now_ms())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Starts a deploy (in `d.state`, `running`); `None` when the app has one running already.
    pub async fn insert_deploy(&self, d: &DeployRecord) -> anyhow::Result<Option<()>> {
        let r = sqlx::query(
            "INSERT INTO deploys (id, app, kind, version, image, state, previous_version, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&d.id)
        .bind(&d.app)
        .bind(&d.kind)
        .bind(&d.version)
        .bind(&d.image)
        .bind(d.state.as_str())
        .bind(&d.previous_version)
        .bind(d.created_at)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(Some(())),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn set_deploy_image(&self, id: &str, image: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE deploys SET image = $1 WHERE id = $2").bind(image).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Ends a running deploy in `state` (succeeded or failed).
    pub async fn finish_deploy(&self, id: &str, state: DeployState, reason: Option<&str>) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE deploys SET state = $1, failure_reason = $2, finished_at = $3 WHERE id = $4 AND {}",
            moving(DeployState::sources(state), state)?
        );
        sqlx::query(&sql).bind(state.as_str()).bind(reason).bind(now_ms()).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn deploy(&self, id: &str) -> anyhow::Result<Option<DeployRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM deploys WHERE id = $1", DeployRecord::COLUMNS))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| DeployRecord::from_row(&r)).transpose()
    }

    pub async fn deploys_of(&self, app: &str, limit: i64) -> anyhow::Result<Vec<DeployRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM deploys WHERE app = $1 ORDER BY created_at DESC, id LIMIT $2",
            DeployRecord::COLUMNS
        ))
        .bind(app)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(DeployRecord::from_row).collect()
    }

    /// Deploys left running by a crash of the runner.
    pub async fn running_deploys(&self) -> anyhow::Result<Vec<DeployRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM deploys WHERE {}",
            DeployRecord::COLUMNS,
            state_in("state", &[DeployState::Running])
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(DeployRecord::from_row).collect()
    }
}

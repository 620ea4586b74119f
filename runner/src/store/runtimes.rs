//! Runtimes of one-shot runs (`crate::runs`): the operator's registered images and commands.

use sqlx::{any::AnyRow, Row};

use super::Store;

#[derive(Debug, Clone)]
pub struct RuntimeRecord {
    pub name: String,
    pub image: String,
    pub run: Vec<String>,
    pub compile: Option<Vec<String>>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl RuntimeRecord {
    const COLUMNS: &'static str = "name, image, run, compile, created_at, updated_at";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let compile: Option<String> = r.try_get("compile")?;
        Ok(RuntimeRecord {
            name: r.try_get("name")?,
            image: r.try_get("image")?,
            run: serde_json::from_str(&r.try_get::<String, _>("run")?)?,
            compile: compile.map(|c| serde_json::from_str(&c)).transpose()?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

impl Store {
    /// Creates or replaces a runtime (one statement: concurrent puts never fail); whether it
    /// was new.
    pub async fn put_runtime(&self, r: &RuntimeRecord) -> anyhow::Result<bool> {
        let existed = self.runtime(&r.name).await?.is_some();
        sqlx::query(
            "INSERT INTO runtimes (name, image, run, compile, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (name) DO UPDATE SET image = $2, run = $3, compile = $4, updated_at = $5",
        )
        .bind(&r.name)
        .bind(&r.image)
        .bind(serde_json::to_string(&r.run)?)
        .bind(r.compile.as_ref().map(serde_json::to_string).transpose()?)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(!existed)
    }

    pub async fn runtime(&self, name: &str) -> anyhow::Result<Option<RuntimeRecord>> {
        let sql = format!("SELECT {} FROM runtimes WHERE name = $1", RuntimeRecord::COLUMNS);
        let row = sqlx::query(&sql).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(RuntimeRecord::from_row).transpose()
    }

    pub async fn runtimes(&self) -> anyhow::Result<Vec<RuntimeRecord>> {
        let sql = format!("SELECT {} FROM runtimes ORDER BY name", RuntimeRecord::COLUMNS);
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(RuntimeRecord::from_row).collect()
    }

    pub async fn delete_runtime(&self, name: &str) -> anyhow::Result<bool> {
        let n = sqlx::query("DELETE FROM runtimes WHERE name = $1").bind(name).execute(&self.pool).await?;
        Ok(n.rows_affected() == 1)
    }
}

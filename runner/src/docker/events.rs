//! The engine's event stream, narrowed to this instance's sandboxes: OOM kills and exits.

use std::collections::HashMap;

use bollard::system::EventsOptions;
use futures_util::StreamExt;

use super::DockerEngine;
use crate::engine::{self, SandboxEvent, SandboxEventKind, SandboxEvents};

impl DockerEngine {
    pub(super) fn sandbox_events(&self, since_nano: i64) -> SandboxEvents {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["oom".to_string(), "die".to_string()]),
            (
                "label".to_string(),
                vec![
                    format!("{}=true", engine::LABEL_MANAGED),
                    format!("{}={}", engine::LABEL_INSTANCE, self.instance),
                ],
            ),
        ]);
        let since = format!("{}.{:09}", since_nano.div_euclid(1_000_000_000), since_nano.rem_euclid(1_000_000_000));
        let opts = EventsOptions::<String> { since: Some(since), until: None, filters };
        let metrics = self.metrics.clone();
        let instance = self.instance.clone();
        self.docker
            .events(Some(opts))
            .filter_map(move |r| {
                let item = match r {
                    Err(e) => {
                        metrics.docker_errors.with_label_values(&["events"]).inc();
                        Some(Err(anyhow::Error::from(e).context("the engine's event stream")))
                    }
                    Ok(m) => {
                        let actor = m.actor.unwrap_or_default();
                        let attributes = actor.attributes.unwrap_or_default();
                        let kind = match m.action.as_deref() {
                            Some("oom") => Some(SandboxEventKind::Oom),
                            Some("die") => Some(SandboxEventKind::Died {
                                exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                            }),
                            _ => None,
                        };
                        // Labels can come from an image; the name cannot. Only the container
                        // named as the runner names a session's sandbox speaks for that session.
                        let session = attributes.get(engine::LABEL_SESSION).filter(|s| {
                            attributes.get("name").map(String::as_str) == Some(&engine::sandbox_name(&instance, s))
                        });
                        let pool = attributes.get(engine::LABEL_POOL).filter(|p| {
                            attributes.get("name").map(String::as_str) == Some(&engine::pool_sandbox_name(&instance, p))
                        });
                        kind.map(|kind| {
                            Ok(SandboxEvent {
                                container: actor.id.unwrap_or_default(),
                                session: session.cloned(),
                                pool: pool.cloned(),
                                kind,
                                time_nano: m.time_nano.unwrap_or_else(|| m.time.unwrap_or(0) * 1_000_000_000),
                            })
                        })
                    }
                };
                std::future::ready(item)
            })
            .boxed()
    }
}

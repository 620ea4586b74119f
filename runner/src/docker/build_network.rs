//! The managed build network on the engine: a bridge with a fixed interface name, so the build
//! firewall (`builds/firewall.rs`, on the host) can name it before any build runs.

use std::collections::HashMap;

use anyhow::{bail, Context};
use bollard::network::{CreateNetworkOptions, InspectNetworkOptions};

use super::{is_status, DockerEngine};
use crate::engine::{self, NetworkFacts, MANAGED_BRIDGE, MANAGED_NETWORK};

const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

impl DockerEngine {
    /// A network by name (`default` is the engine's default bridge, as for `docker build`).
    pub(super) async fn network(&self, name: &str) -> anyhow::Result<Option<NetworkFacts>> {
        let name = if name == "default" { "bridge" } else { name };
        match self.docker.inspect_network(name, None::<InspectNetworkOptions<String>>).await {
            Ok(n) => {
                let driver = n.driver.unwrap_or_default();
                let options = n.options.unwrap_or_default();
                let labels = n.labels.unwrap_or_default();
                // A user-defined bridge without a chosen name gets `br-` and its id's first 12.
                let bridge = options.get(BRIDGE_NAME_OPTION).cloned().or_else(|| {
                    (driver == "bridge")
                        .then(|| format!("br-{}", n.id.unwrap_or_default().chars().take(12).collect::<String>()))
                });
                Ok(Some(NetworkFacts {
                    name: n.name.unwrap_or_else(|| name.to_string()),
                    bridge: if driver == "bridge" { bridge } else { None },
                    driver,
                    managed: labels.get(engine::LABEL_MANAGED).is_some_and(|v| v == "true"),
                }))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_network", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    /// Makes the runner's build network unless it exists; refuses a network of that name that is
    /// not the runner's (its interface would not be the one the rules name). Idempotent, also
    /// against another runner creating it at the same moment.
    pub(super) async fn ensure_build_network(&self) -> anyhow::Result<NetworkFacts> {
        for _ in 0..2 {
            if let Some(n) = self.network(MANAGED_NETWORK).await? {
                if n.bridge.as_deref() != Some(MANAGED_BRIDGE) || !n.managed {
                    bail!(
                        "a network named {MANAGED_NETWORK} exists but is not the runner's (driver {}, interface {:?}); \
                         remove it and the runner makes its own",
                        n.driver,
                        n.bridge
                    );
                }
                return Ok(n);
            }
            let opts = CreateNetworkOptions {
                name: MANAGED_NETWORK.to_string(),
                check_duplicate: true,
                driver: "bridge".to_string(),
                options: HashMap::from([
                    (BRIDGE_NAME_OPTION.to_string(), MANAGED_BRIDGE.to_string()),
                    // Two authors' builds running at once do not reach each other either.
                    ("com.docker.network.bridge.enable_icc".to_string(), "false".to_string()),
                ]),
                labels: HashMap::from([(engine::LABEL_MANAGED.to_string(), "true".to_string())]),
                ..Default::default()
            };
            match self.docker.create_network(opts).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) => {} // made meanwhile: inspect it again
                Err(e) => {
                    return Err(self.count("create_network", Err::<(), _>(e)).unwrap_err())
                        .context(format!("creating the build network {MANAGED_NETWORK}"))
                }
            }
        }
        bail!("the build network {MANAGED_NETWORK} vanished while it was being made")
    }
}

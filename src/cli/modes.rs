//! The daemon's options, mode by mode: where the config comes from, and each feature a switch
//! turns on (pruning, exclusive Leases, the DRA driver, Events), with the flags that only mean
//! something beside another refused when that other is off.

use super::defs::{Flag, DEFAULT_CONFIG, DEFAULT_CONFIGMAP_KEY, DEFAULT_DEVICE_PLUGIN_DIR};
use super::parse::{is_namespace, is_object_name, node_name, Inputs};
use super::{CliError, RunOptions, Source};
use crate::config::{is_dns_subdomain, NodeName};
use crate::dra::{self, DraOptions};
use crate::events::{EventOptions, ObjectRef};
use crate::kubelet::podresources;
use crate::leases::LeaseOptions;
use crate::prune::PruneOptions;
use crate::source::configmap::ApiOptions;

/// `spookd [OPTIONS]`. Each part is read in a fixed order, so of two mistakes the same one is
/// reported whatever order the flags came in.
pub(super) fn run_options(
    inputs: &Inputs<'_>,
    hostname: impl FnOnce() -> std::io::Result<String>,
) -> Result<RunOptions, CliError> {
    let node_name = this_node(inputs, hostname)?;
    // Read even for the API source: a bad value is refused wherever it is set.
    let poll_interval = inputs.duration(Flag::PollInterval)?;
    let source = source(inputs, poll_interval)?;
    let metrics_addr = inputs.metrics_addr()?;
    let prune = prune(inputs)?;
    let dra_on = inputs.switch(Flag::Dra)?;
    let leases = leases(inputs, dra_on)?;
    let dra = if dra_on {
        Some(dra(inputs, leases.is_some(), prune.is_some())?)
    } else {
        inputs.alone(
            Flag::Dra,
            &[
                Flag::DraDriver,
                Flag::KubeletPluginsDir,
                Flag::KubeletRegistryDir,
                Flag::CdiDir,
            ],
        )?;
        None
    };
    let api_source = matches!(source, Source::ConfigMap(_));
    source_flags_fit(inputs, api_source)?;
    // An API server is known: given, or the in-cluster one.
    let api_known = inputs.value(Flag::ApiServer).is_some() || inputs.in_cluster_server().is_some();
    let events = events(inputs, &source, api_known)?;
    if !api_source && prune.is_none() && leases.is_none() && dra.is_none() && events.is_none() {
        if let Some(f) = inputs.given(&[Flag::ApiServer, Flag::TokenFile, Flag::CaFile]) {
            return Err(CliError::Alone {
                from: f.name(),
                needs: "--configmap, --prune-stale-resources, --exclusive-leases or --dra",
            });
        }
    }
    if dra.is_some() {
        if let Some(f) = inputs.given(&[Flag::DevicePluginDir]) {
            return Err(CliError::Alone {
                from: f.name(),
                needs: "device-plugin servers (not --dra)",
            });
        }
    }
    Ok(RunOptions {
        source,
        node_name,
        metrics_addr,
        prune,
        leases,
        dra,
        events,
        device_plugin_dir: inputs.path(Flag::DevicePluginDir, DEFAULT_DEVICE_PLUGIN_DIR),
    })
}

/// --node-name, else the host name lower-cased (as the kubelet names its node).
fn this_node(
    inputs: &Inputs<'_>,
    hostname: impl FnOnce() -> std::io::Result<String>,
) -> Result<NodeName, CliError> {
    match inputs.value(Flag::NodeName) {
        Some((from, v)) => node_name(from, v),
        None => {
            let host = hostname().map_err(CliError::NoHostName)?;
            node_name("the host name", host.trim().to_lowercase())
        }
    }
}

/// The file, or the ConfigMap through the API; never both.
fn source(inputs: &Inputs<'_>, poll_interval: std::time::Duration) -> Result<Source, CliError> {
    match (inputs.value(Flag::Config), inputs.value(Flag::ConfigMap)) {
        (Some(_), Some(_)) => Err(CliError::TwoSources),
        (_, Some((from, cm))) => {
            let (namespace, name) = cm
                .split_once('/')
                .filter(|(ns, n)| is_namespace(ns) && is_object_name(n))
                .ok_or_else(|| CliError::BadConfigMap {
                    from,
                    value: cm.clone(),
                })?;
            Ok(Source::ConfigMap(ApiOptions {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key: inputs
                    .value(Flag::ConfigMapKey)
                    .map_or_else(|| DEFAULT_CONFIGMAP_KEY.to_owned(), |(_, v)| v),
                conn: inputs.connection(Flag::ConfigMap.name())?,
                watch_timeout: inputs.duration(Flag::WatchTimeout)?,
            }))
        }
        (_, None) => Ok(Source::File {
            path: inputs.path(Flag::Config, DEFAULT_CONFIG),
            poll_interval,
        }),
    }
}

/// A source's own flags given for the other source are a mistake. (Only flags: an environment
/// variable may be set for a mode another pod uses.)
fn source_flags_fit(inputs: &Inputs<'_>, api_source: bool) -> Result<(), CliError> {
    if !api_source {
        if let Some(f) = inputs.given(&[Flag::ConfigMapKey, Flag::WatchTimeout]) {
            return Err(CliError::Alone {
                from: f.name(),
                needs: Flag::ConfigMap.name(),
            });
        }
    } else if let Some(f) = inputs.given(&[Flag::PollInterval]) {
        return Err(CliError::Alone {
            from: f.name(),
            needs: "the file source (--config)",
        });
    }
    Ok(())
}

/// `--prune-stale-resources`: `None` when off.
fn prune(inputs: &Inputs<'_>) -> Result<Option<PruneOptions>, CliError> {
    if !inputs.switch(Flag::PruneStaleResources)? {
        inputs.alone(Flag::PruneStaleResources, &[Flag::PruneAfter])?;
        return Ok(None);
    }
    Ok(Some(PruneOptions {
        conn: inputs.connection(Flag::PruneStaleResources.name())?,
        after: inputs.duration(Flag::PruneAfter)?,
    }))
}

/// `--lease-namespace`, checked; `None`: spookd's own.
fn lease_namespace(inputs: &Inputs<'_>) -> Result<Option<String>, CliError> {
    match inputs.value(Flag::LeaseNamespace) {
        Some((from, ns)) if !is_namespace(&ns) => Err(CliError::BadNamespace { from, value: ns }),
        other => Ok(other.map(|(_, ns)| ns)),
    }
}

/// `--exclusive-leases`: `None` when off. The DRA driver takes the Lease namespace and duration
/// for its leader Lease, so with `--dra` only the podresources socket is left over.
fn leases(inputs: &Inputs<'_>, dra_on: bool) -> Result<Option<LeaseOptions>, CliError> {
    if !inputs.switch(Flag::ExclusiveLeases)? {
        let lease_flags: &[Flag] = if dra_on {
            &[Flag::PodResourcesSocket]
        } else {
            &[
                Flag::LeaseNamespace,
                Flag::LeaseDuration,
                Flag::PodResourcesSocket,
            ]
        };
        inputs.alone(Flag::ExclusiveLeases, lease_flags)?;
        return Ok(None);
    }
    let namespace = lease_namespace(inputs)?;
    Ok(Some(LeaseOptions {
        conn: inputs.connection(Flag::ExclusiveLeases.name())?,
        namespace,
        duration: inputs.duration(Flag::LeaseDuration)?,
        pod_resources_socket: inputs.path(Flag::PodResourcesSocket, podresources::DEFAULT_SOCKET),
    }))
}

/// `--dra`: the driver instead of device-plugin servers, so none of their features.
fn dra(inputs: &Inputs<'_>, leases_on: bool, prune_on: bool) -> Result<DraOptions, CliError> {
    for (on, f) in [
        (leases_on, Flag::ExclusiveLeases),
        (prune_on, Flag::PruneStaleResources),
    ] {
        if on {
            return Err(CliError::Conflict {
                from: f.name(),
                with: Flag::Dra.name(),
            });
        }
    }
    let driver = match inputs.value(Flag::DraDriver) {
        // Also the CDI vendor, which must start with a letter.
        Some((from, d))
            if !(is_dns_subdomain(&d)
                && d.len() <= dra::MAX_DRIVER
                && d.starts_with(|c: char| c.is_ascii_lowercase())) =>
        {
            return Err(CliError::BadDriver { from, value: d })
        }
        Some((_, d)) => d,
        None => dra::DEFAULT_DRIVER.to_owned(),
    };
    Ok(DraOptions {
        driver,
        plugins_dir: inputs.path(Flag::KubeletPluginsDir, dra::DEFAULT_PLUGINS_DIR),
        registry_dir: inputs.path(Flag::KubeletRegistryDir, dra::DEFAULT_REGISTRY_DIR),
        cdi_dir: inputs.path(Flag::CdiDir, dra::DEFAULT_CDI_DIR),
        conn: inputs.connection(Flag::Dra.name())?,
        lease_namespace: lease_namespace(inputs)?,
        lease_duration: inputs.duration(Flag::LeaseDuration)?,
    })
}

/// `--events`: on when asked, or when the Pod and an API server are known (in a cluster); off
/// when asked, or outside a cluster.
fn events(
    inputs: &Inputs<'_>,
    source: &Source,
    api_known: bool,
) -> Result<Option<EventOptions>, CliError> {
    let asked = inputs.value(Flag::Events).is_some();
    if asked && !inputs.switch(Flag::Events)? {
        return Ok(None);
    }
    let (Some((nf, name)), Some((sf, namespace))) = (
        inputs.value(Flag::PodName),
        inputs.value(Flag::PodNamespace),
    ) else {
        return if asked {
            Err(CliError::NoPod)
        } else {
            Ok(None)
        };
    };
    if !is_object_name(&name) {
        return Err(CliError::BadPod {
            from: nf,
            value: name,
        });
    }
    if !is_namespace(&namespace) {
        return Err(CliError::BadPod {
            from: sf,
            value: namespace,
        });
    }
    let uid = match inputs.value(Flag::PodUid) {
        Some((from, uid))
            if uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            return Err(CliError::BadPod { from, value: uid })
        }
        Some((_, uid)) => uid,
        None => String::new(),
    };
    if !asked && !api_known {
        return Ok(None);
    }
    Ok(Some(EventOptions {
        conn: inputs.connection(Flag::Events.name())?,
        pod: ObjectRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace,
            name,
            uid,
        },
        configmap: match source {
            Source::ConfigMap(api) => Some((api.namespace.clone(), api.name.clone())),
            Source::File { .. } => None,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::*;
    use crate::cli::{DEFAULT_CA_FILE, DEFAULT_LEASE_DURATION, DEFAULT_TOKEN_FILE};
    use crate::kube::client::Connection;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn events_are_on_in_a_cluster_and_off_outside_unless_asked() {
        let cluster = [
            ("POD_NAME", "spookd-x1"),
            ("POD_NAMESPACE", "spookd"),
            ("POD_UID", "0b7c4e36-5a1f"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let on = opts(&[], &cluster).events.unwrap();
        assert_eq!(on.conn.server, "https://10.0.0.1:443");
        assert_eq!(
            on.pod,
            ObjectRef {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: "spookd".into(),
                name: "spookd-x1".into(),
                uid: "0b7c4e36-5a1f".into(),
            }
        );
        assert_eq!(on.configmap, None);
        let cm = opts(&["--configmap", "lab/cfg"], &cluster).events.unwrap();
        assert_eq!(cm.configmap, Some(("lab".into(), "cfg".into())));
        // Outside a cluster (no Pod, or no API server): off.
        assert_eq!(opts(&[], &cluster[..2]).events, None);
        assert_eq!(opts(&[], &cluster[2..]).events, None);
        assert_eq!(opts(&["--events=false"], &cluster).events, None);
        let err = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert!(err(&["--events"], &cluster[2..]).starts_with("--events needs the Pod"));
        assert!(err(&["--events"], &cluster[..2]).starts_with("--events needs --api-server"));
        assert_eq!(
            err(&["--pod-name", "Bad_Name"], &cluster[1..]),
            "--pod-name: \"Bad_Name\" is not a Pod's name, namespace or UID"
        );
        assert!(err(
            &[],
            &[
                ("POD_UID", "../x"),
                cluster[0],
                cluster[1],
                cluster[3],
                cluster[4]
            ]
        )
        .starts_with("POD_UID: "));
    }

    #[test]
    fn dra_mode_takes_its_flags_the_api_and_the_lease_flags() {
        let o = opts(
            &[
                "--dra",
                "--dra-driver",
                "scopes.skao.int",
                "--kubelet-plugins-dir",
                "/p",
                "--cdi-dir",
                "/cdi",
                "--api-server",
                "https://127.0.0.1:6443",
                "--lease-namespace",
                "lab",
                "--lease-duration",
                "15s",
            ],
            &[("SPOOKD_KUBELET_REGISTRY_DIR", "/reg")],
        );
        assert_eq!(
            o.dra,
            Some(DraOptions {
                driver: "scopes.skao.int".into(),
                plugins_dir: "/p".into(),
                registry_dir: "/reg".into(),
                cdi_dir: "/cdi".into(),
                conn: Connection {
                    server: "https://127.0.0.1:6443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                lease_namespace: Some("lab".into()),
                lease_duration: Duration::from_secs(15),
            })
        );
        let defaults = opts(&["--dra", "--api-server", "https://a:1"], &[])
            .dra
            .unwrap();
        assert_eq!(defaults.driver, dra::DEFAULT_DRIVER);
        assert_eq!(
            defaults.plugins_dir,
            PathBuf::from(dra::DEFAULT_PLUGINS_DIR)
        );
        assert_eq!(
            defaults.registry_dir,
            PathBuf::from(dra::DEFAULT_REGISTRY_DIR)
        );
        assert_eq!(defaults.cdi_dir, PathBuf::from(dra::DEFAULT_CDI_DIR));
        assert_eq!(defaults.lease_duration, DEFAULT_LEASE_DURATION);
    }

    #[test]
    fn dra_mode_refuses_what_does_not_fit_it() {
        let err = |args: &[&str]| run(args, &[]).unwrap_err().to_string();
        let with = |extra: &[&str]| {
            let mut v = vec!["--dra", "--api-server", "https://a:1"];
            v.extend_from_slice(extra);
            err(&v)
        };
        let long = "a".repeat(64);
        for bad in [
            "Upper.io",
            "a_b.io",
            "-a.io",
            "3d.example.com",
            long.as_str(),
        ] {
            assert!(
                with(&["--dra-driver", bad]).contains("is not a driver name"),
                "{bad}"
            );
        }
        assert!(with(&["--exclusive-leases"]).starts_with("--exclusive-leases is a device-plugin"));
        assert!(
            with(&["--prune-stale-resources"]).starts_with("--prune-stale-resources is a device")
        );
        assert_eq!(
            with(&["--device-plugin-dir", "/x"]),
            "--device-plugin-dir only has a meaning with device-plugin servers (not --dra)"
        );
        assert_eq!(
            err(&["--cdi-dir", "/x"]),
            "--cdi-dir only has a meaning with --dra"
        );
        assert_eq!(
            err(&["--dra"]),
            "--dra needs --api-server outside a cluster (KUBERNETES_SERVICE_HOST and \
             KUBERNETES_SERVICE_PORT are not set)"
        );
        // Without --dra or --exclusive-leases, the lease flags stand alone.
        assert_eq!(
            err(&["--lease-duration", "5s"]),
            "--lease-duration only has a meaning with --exclusive-leases"
        );
    }

    #[test]
    fn configmap_source_in_cluster_defaults_and_overrides() {
        let in_cluster = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let o = opts(&["--configmap", "spookd/spookd-device-plugin"], &in_cluster);
        assert_eq!(
            o.source,
            Source::ConfigMap(ApiOptions {
                namespace: "spookd".into(),
                name: "spookd-device-plugin".into(),
                key: "config.yaml".into(),
                conn: Connection {
                    server: "https://10.96.0.1:443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                watch_timeout: Duration::from_secs(60),
            })
        );
        let v6 = [
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let Source::ConfigMap(api) = opts(&["--configmap", "a/b"], &v6).source else {
            panic!()
        };
        assert_eq!(api.conn.server, "https://[fd00::1]:443");
        let env = [
            ("SPOOKD_CONFIGMAP", "ns/cm"),
            ("SPOOKD_CONFIGMAP_KEY", "k.yaml"),
            ("SPOOKD_API_SERVER", "https://127.0.0.1:6443/"),
            ("SPOOKD_TOKEN_FILE", "/t"),
            ("SPOOKD_CA_FILE", "/ca"),
            ("SPOOKD_WATCH_TIMEOUT", "5s"),
        ];
        assert_eq!(
            opts(&[], &env).source,
            Source::ConfigMap(ApiOptions {
                namespace: "ns".into(),
                name: "cm".into(),
                key: "k.yaml".into(),
                conn: Connection {
                    server: "https://127.0.0.1:6443".into(),
                    token_file: "/t".into(),
                    ca_file: "/ca".into(),
                },
                watch_timeout: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn prune_is_off_by_default_and_takes_the_api_flags() {
        let in_cluster = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        assert_eq!(opts(&[], &in_cluster).prune, None);
        assert_eq!(
            opts(&["--prune-stale-resources"], &in_cluster).prune,
            Some(PruneOptions {
                conn: Connection {
                    server: "https://10.96.0.1:443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                after: Duration::from_secs(330),
            })
        );
        let env = [
            ("SPOOKD_PRUNE_STALE_RESOURCES", "true"),
            ("SPOOKD_PRUNE_AFTER", "2s"),
            ("SPOOKD_API_SERVER", "https://127.0.0.1:6443"),
            ("SPOOKD_TOKEN_FILE", "/t"),
            ("SPOOKD_CA_FILE", "/ca"),
        ];
        let o = opts(&["--config", "/c.yaml"], &env);
        assert_eq!(
            o.prune,
            Some(PruneOptions {
                conn: Connection {
                    server: "https://127.0.0.1:6443".into(),
                    token_file: "/t".into(),
                    ca_file: "/ca".into(),
                },
                after: Duration::from_secs(2),
            })
        );
        // The file source stays the source.
        assert!(matches!(o.source, Source::File { .. }));
        // A flag wins over the variable, both ways.
        assert_eq!(
            opts(&["--prune-stale-resources=false"], &env[..1]).prune,
            None
        );
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert_eq!(
            e(&["--prune-stale-resources"], &[]),
            "--prune-stale-resources needs --api-server outside a cluster \
             (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)"
        );
        assert_eq!(
            e(&["--prune-after", "1m"], &in_cluster),
            "--prune-after only has a meaning with --prune-stale-resources"
        );
        assert_eq!(
            e(&[], &[("SPOOKD_PRUNE_STALE_RESOURCES", "yes")]),
            "SPOOKD_PRUNE_STALE_RESOURCES: \"yes\" is not true or false"
        );
        assert_eq!(
            e(
                &["--prune-stale-resources", "--prune-after", "0s"],
                &in_cluster
            ),
            "--prune-after: \"0s\" is not a positive duration (write e.g. 250ms, 2s, 1m or 1m30s)"
        );
    }

    #[test]
    fn exclusive_leases_are_off_by_default_and_take_their_flags() {
        let in_cluster = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        assert_eq!(opts(&[], &in_cluster).leases, None);
        assert_eq!(
            opts(&["--exclusive-leases"], &in_cluster).leases,
            Some(LeaseOptions {
                conn: Connection {
                    server: "https://10.96.0.1:443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                namespace: None,
                duration: Duration::from_secs(40),
                pod_resources_socket: "/var/lib/kubelet/pod-resources/kubelet.sock".into(),
            })
        );
        let env = [
            ("SPOOKD_EXCLUSIVE_LEASES", "1"),
            ("SPOOKD_LEASE_NAMESPACE", "devices"),
            ("SPOOKD_LEASE_DURATION", "15s"),
            ("SPOOKD_POD_RESOURCES_SOCKET", "/pr.sock"),
            ("SPOOKD_API_SERVER", "https://127.0.0.1:6443"),
        ];
        let leases = opts(&[], &env).leases.unwrap();
        assert_eq!(leases.namespace.as_deref(), Some("devices"));
        assert_eq!(leases.duration, Duration::from_secs(15));
        assert_eq!(leases.pod_resources_socket, PathBuf::from("/pr.sock"));
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert_eq!(
            e(&["--lease-duration", "1m"], &in_cluster),
            "--lease-duration only has a meaning with --exclusive-leases"
        );
        assert_eq!(
            e(
                &["--exclusive-leases", "--lease-namespace", "Bad_NS"],
                &in_cluster
            ),
            "--lease-namespace: \"Bad_NS\" is not a namespace (a lowercase DNS label)"
        );
        assert_eq!(
            e(&["--exclusive-leases"], &[]),
            "--exclusive-leases needs --api-server outside a cluster (KUBERNETES_SERVICE_HOST \
             and KUBERNETES_SERVICE_PORT are not set)"
        );
    }

    #[test]
    fn configmap_source_errors() {
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert!(e(&["--config", "a", "--configmap", "n/c"], &[])
            .starts_with("--config and --configmap"));
        assert!(e(&["--configmap", "n/c"], &[("SPOOKD_CONFIG", "x")])
            .starts_with("--config and --configmap"));
        assert_eq!(
            e(&["--configmap", "n/c"], &[]),
            "--configmap needs --api-server outside a cluster (KUBERNETES_SERVICE_HOST and \
             KUBERNETES_SERVICE_PORT are not set)"
        );
        for bad in ["nc", "n/", "/c", "N/c", "n.x/c", "n/c/d"] {
            assert!(
                e(&["--configmap", bad, "--api-server", "https://h"], &[])
                    .contains("is not NAMESPACE/NAME"),
                "{bad}"
            );
        }
        for bad in ["http://h:1", "h:1", "https://", "https://h/path"] {
            assert_eq!(
                e(&["--configmap", "n/c", "--api-server", bad], &[]),
                format!("--api-server: {bad:?} is not an https:// URL")
            );
        }
    }
}

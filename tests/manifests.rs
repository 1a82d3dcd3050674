//! The static manifests: the contract details a schema cannot check. (Schemas are checked
//! strictly, offline, by scripts/test with kubernetes-validate.)

use serde_yaml::Value;
use spookd::config::{Config, NodeName};

/// A kustomization as `kubectl kustomize` renders it (through scripts/kustomize, which finds or
/// installs a kubectl that knows components).
fn rendered(dir: &str) -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(format!("{root}/scripts/kustomize"))
        .arg(format!("{root}/{dir}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn docs_in(paths: &[&str]) -> Vec<Value> {
    paths.iter().flat_map(|p| docs(p)).collect()
}

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn the_sample_config_is_valid_and_names_the_seed_devices() {
    let docs = docs("manifests/base/10-spookd-device-plugin.yaml");
    let cm = find(&docs, "ConfigMap");
    let config = Config::parse(s(&cm["data"]["config.yaml"]).as_bytes(), "ConfigMap").unwrap();
    let node1 = config.for_node(&NodeName::try_from("node1".to_owned()).unwrap());
    let counts: Vec<(String, usize)> = node1
        .iter()
        .map(|(r, d)| (r.to_string(), d.len()))
        .collect();
    assert_eq!(
        counts,
        [
            ("example.com/thingamajig".into(), 1),
            ("example.com/widget".into(), 1)
        ]
    );
}

#[test]
fn names_and_namespace() {
    let all: Vec<Value> = [
        "manifests/base/00-namespace.yaml",
        "manifests/base/10-spookd-device-plugin.yaml",
        "manifests/base/20-test-consumer.yaml",
    ]
    .iter()
    .flat_map(|p| docs(p))
    .collect();
    for d in &all {
        let kind = s(&d["kind"]);
        let name = s(&d["metadata"]["name"]);
        match kind {
            "Namespace" => assert_eq!(name, "spookd"),
            "ResourceQuota" => assert_eq!(name, "spookd-critical-pods"),
            "Role" | "RoleBinding" if name.ends_with(":events") => {
                assert_eq!(name, "spookd-device-plugin:events")
            }
            "Role" => assert_eq!(name, "spookd-device-plugin:watch-configmaps"),
            "Deployment" => assert_eq!(name, "spookd-test-consumer"),
            "ConfigMap" if name.ends_with("-cpus") => assert_eq!(name, "spookd-grpc-cpus"),
            _ => assert_eq!(name, "spookd-device-plugin", "{kind}"),
        }
        if kind != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "spookd", "{kind} {name}");
        }
    }
}

#[test]
fn events_need_only_create_and_patch_in_spookds_namespace() {
    let docs = docs("manifests/base/10-spookd-device-plugin.yaml");
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "spookd-device-plugin:events")
        .unwrap();
    let want: Value = serde_yaml::from_str(
        "[{apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}]",
    )
    .unwrap();
    assert_eq!(role["rules"], want);
    let env = &find(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["env"];
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_UID", "metadata.uid"),
    ] {
        let e = env
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap();
        assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
    }
}

#[test]
fn the_role_grants_only_reading_the_one_configmap() {
    let docs = docs("manifests/base/10-spookd-device-plugin.yaml");
    let rules = docs
        .iter()
        .find(|d| {
            d["kind"] == "Role" && d["metadata"]["name"] == "spookd-device-plugin:watch-configmaps"
        })
        .unwrap()["rules"]
        .as_sequence()
        .unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(
        r["apiGroups"],
        serde_yaml::from_str::<Value>(r#"[""]"#).unwrap()
    );
    assert_eq!(
        r["resources"],
        serde_yaml::from_str::<Value>("[configmaps]").unwrap()
    );
    assert_eq!(
        r["resourceNames"],
        serde_yaml::from_str::<Value>("[spookd-device-plugin]").unwrap()
    );
    assert_eq!(
        r["verbs"],
        serde_yaml::from_str::<Value>("[get, list, watch]").unwrap()
    );
    let binding = find(&docs, "RoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        "spookd-device-plugin:watch-configmaps"
    );
    assert_eq!(binding["subjects"][0]["name"], "spookd-device-plugin");
}

fn check_daemonset(ds: &Value, file_source: bool) {
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    assert!(pod["hostNetwork"].is_null() || pod["hostNetwork"] == false);
    assert_eq!(pod["serviceAccountName"], "spookd-device-plugin");
    let c = &pod["containers"][0];
    let env = c["env"].as_sequence().unwrap();
    let node = env.iter().find(|e| e["name"] == "NODE_NAME").unwrap();
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let dp = mounts
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/kubelet/device-plugins")
        .unwrap();
    let dp_volume = volumes.iter().find(|v| v["name"] == dp["name"]).unwrap();
    assert_eq!(
        dp_volume["hostPath"]["path"],
        "/var/lib/kubelet/device-plugins"
    );
    let config = mounts.iter().find(|m| m["mountPath"] == "/etc/spookd");
    let configmap_env = env.iter().find(|e| e["name"] == "SPOOKD_CONFIGMAP");
    if file_source {
        let config = config.expect("the ConfigMap is mounted at /etc/spookd");
        assert!(config["subPath"].is_null(), "a subPath mount never updates");
        let v = volumes
            .iter()
            .find(|v| v["name"] == config["name"])
            .unwrap();
        assert_eq!(v["configMap"]["name"], "spookd-device-plugin");
        assert!(configmap_env.is_none());
    } else {
        assert!(config.is_none());
        assert_eq!(
            configmap_env.unwrap()["value"],
            "spookd/spookd-device-plugin"
        );
    }
    // The API source and the optional pruning authenticate with the ServiceAccount's token.
    assert_eq!(pod["automountServiceAccountToken"], true);
    // The prune and exclusive-leases components switch features on through these
    // optional ConfigMaps.
    for (i, name) in ["spookd-prune", "spookd-exclusive-leases"]
        .iter()
        .enumerate()
    {
        let from = &c["envFrom"][i]["configMapRef"];
        assert_eq!(from["name"], *name);
        assert_eq!(from["optional"], true);
    }
    // The kubelet's podresources socket, read-only, at its default path.
    let pr = mounts
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/kubelet/pod-resources")
        .unwrap();
    assert_eq!(pr["readOnly"], true);
    let pr_volume = volumes.iter().find(|v| v["name"] == pr["name"]).unwrap();
    assert_eq!(
        pr_volume["hostPath"]["path"],
        "/var/lib/kubelet/pod-resources"
    );
    let metrics = env
        .iter()
        .find(|e| e["name"] == "SPOOKD_METRICS_ADDR")
        .unwrap();
    assert_eq!(metrics["value"], "0.0.0.0:9470");
    assert_eq!(c["ports"][0]["containerPort"], 9470);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], c["ports"][0]["name"]);
    // spookd's args, if any, never set --config (that would conflict with the API source).
    assert!(c["args"].is_null());
    one_cpu_for_grpc(pod);
}

/// gRPC core sees one CPU whatever the node's size (#20): the file glibc counts CPUs in is
/// replaced by the one in spookd-grpc-cpus, and that file says one CPU.
fn one_cpu_for_grpc(pod: &Value) {
    let c = &pod["containers"][0];
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == spookd::daemon::CPU_LIST)
        .expect("a CPU list mounted for gRPC core");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "spookd-grpc-cpus");
    for path in [
        "manifests/base/10-spookd-device-plugin.yaml",
        "manifests/dra/spookd-dra.yaml",
    ] {
        let docs = docs(path);
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "spookd-grpc-cpus")
            .unwrap_or_else(|| panic!("{path}: no spookd-grpc-cpus"));
        let list = s(&cm["data"][s(&mount["subPath"])]);
        assert_eq!(spookd::daemon::cpus_in(list), Some(1), "{path}: {list:?}");
    }
}

#[test]
fn daemonsets_follow_the_deploy_contract() {
    check_daemonset(
        find(
            &docs("manifests/base/10-spookd-device-plugin.yaml"),
            "DaemonSet",
        ),
        true,
    );
    check_daemonset(
        find(&rendered("manifests/overlays/api-source"), "DaemonSet"),
        false,
    );
    // Each overlay is the base and its component: the same DaemonSet but for what the
    // component changes.
    let base = rendered("manifests");
    let files = docs_in(&[
        "manifests/base/00-namespace.yaml",
        "manifests/base/10-spookd-device-plugin.yaml",
        "manifests/base/20-test-consumer.yaml",
    ]);
    // kubectl apply -k manifests/ applies what kubectl apply -f manifests/base/ does.
    assert_eq!(base.len(), files.len());
    assert_eq!(find(&base, "DaemonSet"), find(&files, "DaemonSet"));
    for (overlay, extra) in [
        ("prune", "manifests/components/prune/prune.yaml"),
        (
            "exclusive-leases",
            "manifests/components/exclusive-leases/exclusive-leases.yaml",
        ),
    ] {
        let got = rendered(&format!("manifests/overlays/{overlay}"));
        assert_eq!(got.len(), base.len() + docs(extra).len(), "{overlay}");
        assert_eq!(
            find(&got, "DaemonSet"),
            find(&base, "DaemonSet"),
            "{overlay}"
        );
    }
}

#[test]
fn the_test_consumer_wants_one_widget_and_one_thingamajig_twice() {
    let docs = docs("manifests/base/20-test-consumer.yaml");
    let d = find(&docs, "Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    let limits = &d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["example.com/widget"], 1);
    assert_eq!(limits["example.com/thingamajig"], 1);
}

/// Shipped samples and docs never probe a real network: a `healthCheck` that is not commented out
/// targets 127.0.0.1.
#[test]
fn shipped_configs_probe_only_localhost() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/README.md")];
    for dir in [
        "docs",
        "manifests/base",
        "manifests/components/api-source",
        "manifests/components/prune",
        "manifests/components/exclusive-leases",
        "manifests/dra",
        "scripts",
    ] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path.display().to_string());
            }
        }
    }
    let mut probes = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            let code = line.split('#').next().unwrap_or_default();
            // Flow (`healthCheck: {tcp: "…"}`) and block (`tcp: "…"`) style alike.
            let Some((_, rest)) = code.split_once("tcp: \"") else {
                continue;
            };
            probes += 1;
            assert!(rest.starts_with("127.0.0.1:"), "{file}: {line}");
        }
    }
    assert!(probes >= 2, "the docs and the demo show a probe");
}

#[test]
fn the_prune_overlay_switches_pruning_on_with_only_the_node_rights_it_needs() {
    let docs = docs("manifests/components/prune/prune.yaml");
    let cm = find(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "spookd-prune");
    assert_eq!(cm["metadata"]["namespace"], "spookd");
    assert_eq!(cm["data"]["SPOOKD_PRUNE_STALE_RESOURCES"], "true");
    let after = s(&cm["data"]["SPOOKD_PRUNE_AFTER"]);
    assert!(
        spookd::time::parse_duration(after).unwrap() > std::time::Duration::from_secs(300),
        "longer than the kubelet's grace period: {after}"
    );
    let rules = find(&docs, "ClusterRole")["rules"].as_sequence().unwrap();
    let rule = |resources: &str, verbs: &str| {
        let parse = |y: &str| serde_yaml::from_str::<Value>(y).unwrap();
        rules.iter().any(|r| {
            r["apiGroups"] == parse(r#"[""]"#)
                && r["resources"] == parse(resources)
                && r["verbs"] == parse(verbs)
        })
    };
    assert_eq!(rules.len(), 2);
    assert!(rule("[nodes]", "[get, patch]"));
    assert!(rule("[nodes/status]", "[patch]"));
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        "spookd-device-plugin:prune-stale-resources"
    );
    assert_eq!(binding["subjects"][0]["name"], "spookd-device-plugin");
    assert_eq!(binding["subjects"][0]["namespace"], "spookd");
}

#[test]
fn the_exclusive_leases_overlay_grants_only_leases_in_spookds_namespace() {
    let docs = docs("manifests/components/exclusive-leases/exclusive-leases.yaml");
    let cm = find(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "spookd-exclusive-leases");
    assert_eq!(cm["data"]["SPOOKD_EXCLUSIVE_LEASES"], "true");
    assert!(spookd::time::parse_duration(s(&cm["data"]["SPOOKD_LEASE_DURATION"])).is_some());
    let role = find(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "spookd");
    let rules = role["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1);
    let parse = |y: &str| serde_yaml::from_str::<Value>(y).unwrap();
    assert_eq!(rules[0]["apiGroups"], parse("[coordination.k8s.io]"));
    assert_eq!(rules[0]["resources"], parse("[leases]"));
    assert_eq!(
        rules[0]["verbs"],
        parse("[get, list, watch, create, update, delete]")
    );
    let binding = find(&docs, "RoleBinding");
    assert_eq!(binding["roleRef"]["name"], "spookd-device-plugin:leases");
    assert_eq!(binding["subjects"][0]["name"], "spookd-device-plugin");
    assert!(docs.iter().all(|d| d["kind"] != "ClusterRole"));
}

/// Both images (the `prebuilt` stage and the registry build's final stage) run spookd with the
/// same environment: the allocator settings the benchmark measures (it reads them from here).
#[test]
fn both_image_stages_set_the_allocator_environment() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Containerfile")).unwrap();
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    let env_of = |stage: &str| -> Vec<String> {
        stage
            .lines()
            .filter(|l| l.starts_with("ENV "))
            .map(str::to_owned)
            .collect()
    };
    let finals: Vec<Vec<String>> = stages
        .iter()
        .filter(|s| s.starts_with("scratch"))
        .map(|s| env_of(s))
        .collect();
    assert_eq!(
        finals.len(),
        2,
        "a prebuilt and a final stage, both FROM scratch"
    );
    assert_eq!(
        finals[0],
        [
            "ENV GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=131072",
            "ENV GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=0",
        ]
    );
    assert_eq!(finals[0], finals[1]);
}

/// The DRA manifests: the names spookd derives are the names the manifests use.
#[test]
fn the_dra_manifests_match_what_spookd_derives() {
    use spookd::config::dra::{class_name, Inventory};
    use spookd::dra::leader::leader_lease_name;
    let example = docs("manifests/dra/example.yaml");
    let docs = docs("manifests/dra/spookd-dra.yaml");
    let cm = find(&docs, "ConfigMap");
    let config = Config::parse(s(&cm["data"]["config.yaml"]).as_bytes(), "ConfigMap").unwrap();
    let inventory = Inventory::new(&config, "ConfigMap").unwrap();
    let template = find(&example, "ResourceClaimTemplate");
    let class =
        s(&template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"]);
    assert!(inventory.classes().contains_key(class), "{class}");
    let resource =
        spookd::config::ResourceName::try_from("skao.int/oscilloscope".to_owned()).unwrap();
    assert_eq!(class, class_name(&resource));
    let deployment = find(&example, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    // The one device is published once: of two replicas, one runs.
    assert_eq!(inventory.devices().len(), 1);

    let role = docs.iter().find(|d| d["kind"] == "Role").unwrap();
    assert_eq!(
        s(&role["rules"][1]["resourceNames"][0]),
        leader_lease_name(spookd::dra::DEFAULT_DRIVER)
    );
    let cluster_role = find(&docs, "ClusterRole");
    let rules: Vec<(String, Vec<String>)> = cluster_role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let verbs = r["verbs"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| s(v).to_owned())
                .collect();
            (s(&r["resources"][0]).to_owned(), verbs)
        })
        .collect();
    let v = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            (
                "resourceslices".to_owned(),
                v(&["get", "list", "watch", "create", "update", "delete"])
            ),
            (
                "deviceclasses".to_owned(),
                v(&["get", "list", "create", "update", "delete"])
            ),
            ("resourceclaims".to_owned(), v(&["get"])),
            // Each node's own Node: a device plugin serving the same name there wins.
            ("nodes".to_owned(), v(&["get"])),
        ]
    );
    let ds = find(&docs, "DaemonSet");
    let mounts: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| s(&m["mountPath"]))
        .collect();
    for dir in [
        spookd::dra::DEFAULT_PLUGINS_DIR,
        spookd::dra::DEFAULT_REGISTRY_DIR,
        spookd::dra::DEFAULT_CDI_DIR,
        "/etc/spookd",
    ] {
        assert!(mounts.contains(&dir), "{dir} not mounted: {mounts:?}");
    }
    let env = &ds["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(env
        .as_sequence()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "SPOOKD_DRA" && e["value"] == "true"));
    one_cpu_for_grpc(&ds["spec"]["template"]["spec"]);
}

/// The no-grpc-cpus overlays (for runtimes that refuse a mount over a /sys file) are the base
/// and the DRA driver without the CPU list: its mount, its volume and its ConfigMap, and nothing
/// else changed. The DRA kustomization is the DRA file as it is.
#[test]
fn the_no_grpc_cpus_overlays_drop_only_the_cpu_list() {
    without_the_cpu_list("manifests", "manifests/overlays/no-grpc-cpus");
    without_the_cpu_list("manifests/dra", "manifests/overlays/dra-no-grpc-cpus");
    let key = |d: &Value| format!("{:?}/{:?}", d["kind"], d["metadata"]["name"]);
    let sorted = |mut docs: Vec<Value>| {
        docs.sort_by_key(key);
        docs
    };
    assert_eq!(
        sorted(rendered("manifests/dra")),
        sorted(docs("manifests/dra/spookd-dra.yaml"))
    );
}

fn without_the_cpu_list(base: &str, overlay: &str) {
    let base = rendered(base);
    let got = rendered(overlay);
    assert_eq!(got.len(), base.len() - 1);
    let is_list =
        |d: &&Value| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "spookd-grpc-cpus";
    assert!(!got.iter().any(|d| is_list(&d)));
    let mut want = find(&base, "DaemonSet").clone();
    let pod = &mut want["spec"]["template"]["spec"];
    pod["containers"][0]["volumeMounts"]
        .as_sequence_mut()
        .unwrap()
        .retain(|m| m["mountPath"] != spookd::daemon::CPU_LIST);
    pod["volumes"]
        .as_sequence_mut()
        .unwrap()
        .retain(|v| v["name"] != "grpc-cpus");
    assert_ne!(&want, find(&base, "DaemonSet"));
    assert_eq!(find(&got, "DaemonSet"), &want);
    let others = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"] != "DaemonSet" && !is_list(d))
            .cloned()
            .collect()
    };
    assert_eq!(others(&got), others(&base));
}

/// The seed's pods as they are under `--dra`: the unchanged-pods walkthrough asks in
/// `resources.limits` for a resource the DRA example's config maps, and spookd's DeviceClass for
/// it carries that name as its extended resource (so the scheduler serves it from DRA).
#[test]
fn the_unchanged_pods_walkthrough_asks_what_a_class_serves() {
    use spookd::config::dra::Inventory;
    let consumer = docs("manifests/dra/unchanged-pods/consumer.yaml");
    let deployment = find(&consumer, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let limits = &deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["skao.int/oscilloscope"], 1);
    let dra = docs("manifests/dra/spookd-dra.yaml");
    let cm = find(&dra, "ConfigMap");
    let config = Config::parse(s(&cm["data"]["config.yaml"]).as_bytes(), "ConfigMap").unwrap();
    let inventory = Inventory::new(&config, "ConfigMap").unwrap();
    let classes = spookd::dra::objects::classes(spookd::dra::DEFAULT_DRIVER, &inventory);
    let served: Vec<Option<&str>> = classes
        .iter()
        .map(|c| c.spec.extended_resource_name.as_deref())
        .collect();
    assert_eq!(served, [Some("skao.int/oscilloscope")]);
    // One oscilloscope for two replicas: one runs, one stays Pending.
    assert_eq!(inventory.devices().len(), 1);
    // The seed's own test consumer, byte for byte, asks for resources by name the same way: the
    // base config's resources get classes serving exactly those names.
    let base = docs("manifests/base/10-spookd-device-plugin.yaml");
    let cm = find(&base, "ConfigMap");
    let config = Config::parse(s(&cm["data"]["config.yaml"]).as_bytes(), "ConfigMap").unwrap();
    let inventory = Inventory::new(&config, "ConfigMap").unwrap();
    let mut served: Vec<String> = spookd::dra::objects::classes("spookd.dev", &inventory)
        .into_iter()
        .filter_map(|c| c.spec.extended_resource_name)
        .collect();
    served.sort();
    let seed = docs("manifests/base/20-test-consumer.yaml");
    let limits = &find(&seed, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        ["resources"]["limits"];
    let mut asked: Vec<String> = limits
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| s(k).to_owned())
        .filter(|k| k.contains('/'))
        .collect();
    asked.sort();
    assert_eq!(served, asked);
}

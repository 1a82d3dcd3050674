//! The Helm chart (charts/spookd), rendered by a real helm v3 (scripts/helm, which finds or
//! installs one): its modes against the kustomizations they must equal, the seed's values, a
//! subchart use, spookd check on every config it renders, and its schema's refusals.
//!
//! One source of truth: `manifests/` stays hand-written kustomize (read and reviewed as YAML by
//! `kubectl apply -k` users, with components a chart cannot express) and the chart stays a chart;
//! each mode's render must equal its kustomization's, names and labels aside. Either side drifting
//! fails here.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_yaml::{Mapping, Value};

use crate::util::TempDir;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `helm ARGS`; its stdout, or the failure's stderr.
fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(format!("{ROOT}/scripts/helm"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The chart rendered as release `release` in namespace spookd, with `extra` arguments.
fn template(release: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        release,
        "charts/spookd",
        "--namespace",
        "spookd",
    ];
    args.extend(extra);
    yaml_docs(&helm(&args).unwrap_or_else(|e| panic!("helm {args:?}: {e}")))
}

/// A kustomization as `kubectl kustomize` renders it.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(format!("{ROOT}/scripts/kustomize"))
        .arg(format!("{ROOT}/{dir}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8(out.stdout).unwrap())
}

fn kind_name(d: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&d["kind"]), s(&d["metadata"]["name"]))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn container(docs: &[Value]) -> &Value {
    &find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
}

/// The container's env as name → value (or the fieldRef's path).
fn env(docs: &[Value]) -> BTreeMap<String, String> {
    container(docs)["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e["value"]
                .as_str()
                .or_else(|| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
                .unwrap();
            (e["name"].as_str().unwrap().to_owned(), v.to_owned())
        })
        .collect()
}

fn remove(v: &mut Value, path: &[&str]) {
    let (last, parents) = path.split_last().unwrap();
    let mut at = v;
    for p in parents {
        match at.get_mut(*p) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(m) = at.as_mapping_mut() {
        m.remove(*last);
    }
}

/// Renames every string equal to a key of `names` (object names and references to them alike).
fn rename(v: &mut Value, names: &BTreeMap<&str, String>) {
    match v {
        Value::String(s) => {
            if let Some(n) = names.get(s.as_str()) {
                *s = n.clone();
            }
        }
        Value::Sequence(l) => l.iter_mut().for_each(|x| rename(x, names)),
        Value::Mapping(m) => m.values_mut().for_each(|x| rename(x, names)),
        Value::Tagged(t) => rename(&mut t.value, names),
        _ => {}
    }
}

/// What a kubelet and an API server see, names and labels aside:
/// - labels go (the chart adds Helm's own), but for the DaemonSet's `app.kubernetes.io/name`,
///   in its labels, selector and pod template: what tells its pods from another's;
/// - a ConfigMap taken whole as env (envFrom, as manifests/ switch modes) is the same env as its
///   keys listed one by one (as the chart sets them, so `helm upgrade` restarts the pods);
/// - env is compared by name, and config.yaml as the YAML it holds (comments and layout aside).
fn normalized(mut docs: Vec<Value>) -> BTreeMap<(String, String), Value> {
    let as_env: BTreeMap<String, Mapping> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| {
            (
                kind_name(d).1,
                d["data"].as_mapping().cloned().unwrap_or_default(),
            )
        })
        .collect();
    let mut used = Vec::new();
    for d in docs.iter_mut() {
        let daemonset = d["kind"] == "DaemonSet";
        for path in [
            &["metadata", "labels"][..],
            &["spec", "selector", "matchLabels"],
            &["spec", "template", "metadata", "labels"],
        ] {
            let (last, parents) = path.split_last().unwrap();
            let mut at = &mut *d;
            for p in parents {
                at = &mut at[*p];
            }
            let Some(labels) = at.get_mut(*last).and_then(Value::as_mapping_mut) else {
                continue;
            };
            labels.retain(|k, _| daemonset && k == "app.kubernetes.io/name");
            if labels.is_empty() {
                remove(d, path);
            }
        }
        if d["kind"] == "DaemonSet" {
            let c = &mut d["spec"]["template"]["spec"]["containers"][0];
            let mut env: Vec<Value> = c["env"].as_sequence().cloned().unwrap_or_default();
            if let Some(from) = c["envFrom"].as_sequence().cloned() {
                for f in from {
                    let name = f["configMapRef"]["name"].as_str().unwrap().to_owned();
                    if let Some(data) = as_env.get(&name) {
                        for (k, v) in data {
                            let mut e = Mapping::new();
                            e.insert("name".into(), k.clone());
                            e.insert("value".into(), v.clone());
                            env.push(Value::Mapping(e));
                        }
                        used.push(name);
                    }
                }
                remove(c, &["envFrom"]);
            }
            env.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
            c["env"] = Value::Sequence(env);
        }
        if let Some(text) = d["data"]["config.yaml"].as_str() {
            let parsed: Value = serde_yaml::from_str(text).unwrap();
            d["data"]["config.yaml"] = parsed;
        }
    }
    docs.into_iter()
        .filter(|d| !(d["kind"] == "ConfigMap" && used.contains(&kind_name(d).1)))
        .map(|d| (kind_name(&d), d))
        .collect()
}

/// The chart in `values` (a file of charts/spookd/ci/) renders what `kustomization` does, with
/// `renamed` mapping the kustomization's names to the chart's.
fn same_as_kustomize(
    values: &str,
    release: &str,
    kustomization: &[Value],
    renamed: &[(&str, &str)],
) {
    let chart = template(
        release,
        &[
            "-f",
            &format!("charts/spookd/ci/{values}"),
            "--set",
            "image.tag=latest,test.enabled=false",
        ],
    );
    let names: BTreeMap<&str, String> = renamed.iter().map(|(a, b)| (*a, b.to_string())).collect();
    let mut expected: Vec<Value> = kustomization
        .iter()
        .filter(|d| d["kind"] != "Namespace" && kind_name(d).1 != "spookd-test-consumer")
        .cloned()
        .collect();
    expected.iter_mut().for_each(|d| rename(d, &names));
    // Cluster-scoped names: the chart's carry the release's namespace.
    for d in expected.iter_mut() {
        if matches!(
            d["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        ) {
            let name = format!("spookd:{}", d["metadata"]["name"].as_str().unwrap());
            d["metadata"]["name"] = name.into();
        }
        if d["roleRef"]["kind"] == "ClusterRole" {
            let name = format!("spookd:{}", d["roleRef"]["name"].as_str().unwrap());
            d["roleRef"]["name"] = name.into();
        }
    }
    let (chart, expected) = (normalized(chart), normalized(expected));
    let keys = |m: &BTreeMap<(String, String), Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&chart),
        keys(&expected),
        "{values}: the objects differ"
    );
    for (key, want) in &expected {
        let got = &chart[key];
        assert!(
            got == want,
            "{values}: {key:?} differs from the kustomization's\n--- chart ---\n{}--- kustomize ---\n{}",
            serde_yaml::to_string(got).unwrap(),
            serde_yaml::to_string(want).unwrap()
        );
    }
}

const DP_NAMES: &[(&str, &str)] = &[
    ("spookd-grpc-cpus", "spookd-device-plugin-grpc-cpus"),
    ("spookd-critical-pods", "spookd-device-plugin-critical-pods"),
];

#[test]
fn each_device_plugin_mode_renders_what_its_kustomization_applies() {
    for (values, dir) in [
        ("default-values.yaml", "manifests"),
        ("api-source-values.yaml", "manifests/overlays/api-source"),
        (
            "exclusive-leases-values.yaml",
            "manifests/overlays/exclusive-leases",
        ),
        ("prune-values.yaml", "manifests/overlays/prune"),
        (
            "no-grpc-cpus-values.yaml",
            "manifests/overlays/no-grpc-cpus",
        ),
    ] {
        same_as_kustomize(values, "spookd-device-plugin", &kustomize(dir), DP_NAMES);
    }
}

#[test]
fn the_dra_mode_renders_what_its_kustomization_applies() {
    // The DRA driver is applied after manifests/base/00-namespace.yaml, whose ResourceQuota
    // admits its system-node-critical pods; the chart renders that quota itself.
    let quota = kustomize("manifests")
        .into_iter()
        .find(|d| d["kind"] == "ResourceQuota")
        .unwrap();
    let names = &[
        ("spookd-grpc-cpus", "spookd-dra-grpc-cpus"),
        ("spookd-critical-pods", "spookd-dra-critical-pods"),
    ];
    for (values, dir) in [
        ("dra-values.yaml", "manifests/dra"),
        (
            "dra-no-grpc-cpus-values.yaml",
            "manifests/overlays/dra-no-grpc-cpus",
        ),
    ] {
        let mut expected = kustomize(dir);
        expected.push(quota.clone());
        same_as_kustomize(values, "spookd-dra", &expected, names);
    }
}

#[test]
fn the_chart_is_spookds_version() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/charts/spookd/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["name"], "spookd");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let docs = template("spookd-device-plugin", &[]);
    assert_eq!(
        container(&docs)["image"],
        format!(
            "localhost/spookd-device-plugin:{}",
            env!("CARGO_PKG_VERSION")
        )
        .as_str()
    );
}

/// A values file of the seed's chart renders unchanged, with the same meaning.
#[test]
fn the_seeds_values_keep_their_meaning() {
    let docs = template(
        "spookd-device-plugin",
        &["-f", "charts/spookd/ci/seed-values.yaml"],
    );
    let names: Vec<(String, String)> = docs.iter().map(kind_name).collect();
    // The seed's release name and nameOverride name the objects as the seed's chart did.
    assert!(
        names.contains(&("DaemonSet".into(), "spookd-device-plugin".into())),
        "{names:?}"
    );
    let config = find(&docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let want: Value = serde_yaml::from_str(
        r#"
deviceMapping:
  - hosts: [lab1-host1, lab1-host2]
    devices:
      - {resourceName: skao.int/oscilloscope, instanceID: "0001", env: {IP: 10.0.10.215, PORT: 5025}}
      - {resourceName: skao.int/oscilloscope, instanceID: "0002", env: {IP: 10.0.10.216}}
  - hosts: [lab1-host3]
    devices:
      - resourceName: skao.int/signal-generator
        instanceID: "0001"
        env: {IP: 10.0.10.220, ENABLED: true, BIG: 1234567890123, RATIO: 0.5}
"#,
    )
    .unwrap();
    assert_eq!(serde_yaml::from_str::<Value>(config).unwrap(), want);
    let env = env(&docs);
    assert_eq!(env["RUST_LOG"], "debug");
    let pod = &find(&docs, "DaemonSet")["spec"]["template"];
    assert_eq!(pod["spec"]["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(
        pod["metadata"]["annotations"]["lab.example/owner"],
        "instruments"
    );
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9470");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "10m"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "spookd-device-plugin");
    // The env values as Allocate sets them, numbers and booleans as written.
    let out = check_config(config, &["--node-name", "lab1-host3"]).unwrap();
    for line in [
        "SKAOINT_SIGNAL_GENERATOR_DEV0_BIG=1234567890123",
        "SKAOINT_SIGNAL_GENERATOR_DEV0_ENABLED=true",
        "SKAOINT_SIGNAL_GENERATOR_DEV0_RATIO=0.5",
    ] {
        assert!(out.contains(line), "{line} not in:\n{out}");
    }
}

#[test]
fn log_levels_reach_spookd_as_rust_log() {
    for (level, rust_log) in [
        ("info", "info"),
        ("warning", "warn"),
        ("WARN", "warn"),
        ("Fatal", "error"),
        ("panic", "error"),
        ("trace", "trace"),
        ("info,spookd::health=debug", "info,spookd::health=debug"),
    ] {
        // --set splits at commas: a filter's commas are escaped.
        let set = format!("daemon.logLevel={}", level.replace(',', "\\,"));
        let docs = template("r", &["--set-string", &set]);
        assert_eq!(env(&docs)["RUST_LOG"], rust_log, "{level}");
    }
}

#[test]
fn every_kubelet_path_derives_from_kubelet_path() {
    let mount = |docs: &[Value]| -> BTreeMap<String, String> {
        let spec = &find(docs, "DaemonSet")["spec"]["template"]["spec"];
        let host: BTreeMap<String, String> = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_owned(),
                    v["hostPath"]["path"].as_str()?.to_owned(),
                ))
            })
            .collect();
        spec["containers"][0]["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|m| {
                let h = host.get(m["name"].as_str()?)?;
                Some((h.clone(), m["mountPath"].as_str()?.to_owned()))
            })
            .collect()
    };
    let k = "/var/snap/microk8s/common/var/lib/kubelet";
    let dp = template("r", &["-f", "charts/spookd/ci/microk8s-values.yaml"]);
    assert_eq!(
        mount(&dp),
        BTreeMap::from([
            (
                format!("{k}/device-plugins"),
                "/var/lib/kubelet/device-plugins".to_owned()
            ),
            (
                format!("{k}/pod-resources"),
                "/var/lib/kubelet/pod-resources".to_owned()
            ),
        ])
    );
    let e = env(&dp);
    assert_eq!(
        (
            e["SPOOKD_EXCLUSIVE_LEASES"].as_str(),
            e["SPOOKD_LEASE_DURATION"].as_str()
        ),
        ("true", "1m")
    );
    assert_eq!(
        (
            e["SPOOKD_PRUNE_STALE_RESOURCES"].as_str(),
            e["SPOOKD_PRUNE_AFTER"].as_str()
        ),
        ("true", "5m30s")
    );

    let dra = template(
        "r",
        &[
            "-f",
            "charts/spookd/ci/microk8s-dra-values.yaml",
            "--set",
            "kubeletPath=/var/snap/microk8s/common/var/lib/kubelet/",
        ],
    );
    // The DRA dirs at the host's own paths (the kubelet dials the path spookd registers).
    assert_eq!(
        mount(&dra),
        BTreeMap::from([
            (format!("{k}/plugins"), format!("{k}/plugins")),
            (
                format!("{k}/plugins_registry"),
                format!("{k}/plugins_registry")
            ),
            ("/var/run/cdi".to_owned(), "/var/run/cdi".to_owned()),
        ])
    );
    let e = env(&dra);
    assert_eq!(e["SPOOKD_KUBELET_PLUGINS_DIR"], format!("{k}/plugins"));
    assert_eq!(
        e["SPOOKD_KUBELET_REGISTRY_DIR"],
        format!("{k}/plugins_registry")
    );
    assert_eq!(e["SPOOKD_DRA_DRIVER"], "instruments.skao.int");
    assert_eq!(e["SPOOKD_CONFIGMAP"], "spookd/r-spookd-dra");
    // The API source reads the ConfigMap: RBAC for it, and no volume.
    let role = dra
        .iter()
        .find(|d| kind_name(d) == ("Role".into(), "r-spookd-dra:watch-configmaps".into()))
        .unwrap();
    assert_eq!(role["rules"][0]["resourceNames"][0], "r-spookd-dra");
    assert!(!container(&dra)["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "config"));
    let leader = dra
        .iter()
        .find(|d| kind_name(d) == ("Role".into(), "r-spookd-dra:leader".into()))
        .unwrap();
    assert_eq!(
        leader["rules"][1]["resourceNames"][0],
        spookd::dra::leader::leader_lease_name("instruments.skao.int").as_str()
    );
}

/// `spookd check [ARGS] FILE` on `config`.
fn check_config(config: &str, args: &[&str]) -> Result<String, String> {
    let tmp = TempDir::new();
    let path = tmp.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = crate::util::spookd_command()
        .arg("check")
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// What `helm test` runs: spookd check on the config the release mounts, for every values file
/// of ci/ (each mode) and for the chart's defaults.
#[test]
fn spookd_check_accepts_every_rendered_config() {
    let mut files: Vec<String> = std::fs::read_dir(format!("{ROOT}/charts/spookd/ci"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    let mut renders = vec![("defaults".to_owned(), template("r", &[]))];
    for f in &files {
        renders.push((
            f.clone(),
            template("r", &["-f", &format!("charts/spookd/ci/{f}")]),
        ));
    }
    for (name, docs) in renders {
        let config = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["data"]["config.yaml"].is_string())
            .unwrap()["data"]["config.yaml"]
            .as_str()
            .unwrap();
        if let Err(e) = check_config(config, &[]) {
            panic!("{name}: spookd check refused the rendered config:\n{config}\n{e}");
        }
        // helm test's pod checks that same ConfigMap.
        let test = docs.iter().find(|d| d["kind"] == "Pod").unwrap();
        assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
        assert_eq!(
            test["spec"]["containers"][0]["args"],
            serde_yaml::from_str::<Value>("[check, /etc/spookd/config.yaml]").unwrap()
        );
        let cm = docs
            .iter()
            .find(|d| d["data"]["config.yaml"].is_string())
            .unwrap();
        assert_eq!(
            test["spec"]["volumes"][0]["configMap"]["name"],
            cm["metadata"]["name"]
        );
    }
}

/// The values a typo or a wrong type would otherwise turn into a release that serves nothing.
#[test]
fn the_schema_refuses_what_would_serve_nothing() {
    for (set, key) in [
        (&["--set", "deviceMaping[0].hosts[0]=a"][..], "deviceMaping"),
        (&["--set", "configSource=files"], "configSource"),
        (&["--set", "kubeletPath=relative/path"], "kubeletPath"),
        (&["--set", "kubeletPath=5"], "kubeletPath"),
        (&["--set", "exclusiveLeases.enabled=yes"], "exclusiveLeases"),
        (&["--set", "dra.driverName=Bad_Name"], "driverName"),
        (&["--set", "metrics.port=70000"], "port"),
        (&["--set-string", "daemon.logLevel=inof"], "logLevel"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (&["--set", "exclusiveLeases.duration=40"], "duration"),
        (&["--set", "deviceMapping[0].hosts[0]=a,deviceMapping[0].devices[0].resourceName=a.io/x,deviceMapping[0].devices[0].instanceID=1"], "instanceID"),
        (&["--set", "deviceMapping[0].hosts[0]=a,deviceMapping[0].devices[0].resourceName=a.io/x,deviceMapping[0].devices[0].instanceID=x,deviceMapping[0].devices[0].instanceId=y"], "instanceId"),
    ] {
        let mut args = vec!["template", "r", "charts/spookd"];
        args.extend(set);
        match helm(&args) {
            Ok(_) => panic!("{set:?} was accepted"),
            Err(e) => assert!(e.contains(key) && e.contains("values don't meet the specifications of the schema"), "{set:?}: {e}"),
        }
    }
    // Modes spookd would refuse together fail with the reason.
    for (set, msg) in [
        (
            "dra.enabled=true,exclusiveLeases.enabled=true",
            "exclusiveLeases.enabled is a device-plugin feature",
        ),
        (
            "dra.enabled=true,pruneStaleResources.enabled=true",
            "pruneStaleResources.enabled is a device-plugin feature",
        ),
    ] {
        let e = helm(&["template", "r", "charts/spookd", "--set", set]).unwrap_err();
        assert!(e.contains(msg), "{set}: {e}");
    }
    // What Helm itself passes a subchart, and a null deviceMapping (the seed's `deviceMapping:`),
    // which serves nothing as the seed's chart did.
    let docs = template(
        "r",
        &[
            "--set",
            "global.x=1,enabled=true",
            "--set",
            "deviceMapping=null",
        ],
    );
    let config: Value = serde_yaml::from_str(&config_of(&docs)).unwrap();
    assert_eq!(
        config,
        serde_yaml::from_str::<Value>("deviceMapping: []").unwrap()
    );
}

/// An umbrella chart depending on charts/spookd through file://, with an alias and a condition,
/// its deviceMapping under the alias.
#[test]
fn the_chart_works_as_a_subchart() {
    let tmp = TempDir::new();
    let umbrella = tmp.join("lab");
    std::fs::create_dir_all(&umbrella).unwrap();
    std::fs::write(
        umbrella.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: lab\nversion: 1.0.0\ndependencies:\n  - name: spookd\n    \
             version: '*'\n    repository: file://{ROOT}/charts/spookd\n    alias: instruments\n    \
             condition: instruments.enabled\n"
        ),
    )
    .unwrap();
    std::fs::write(
        umbrella.join("values.yaml"),
        "global:\n  site: lab1\ninstruments:\n  enabled: true\n  daemon:\n    logLevel: warning\n  \
         deviceMapping:\n    - hosts: [lab1-host1]\n      devices:\n        - resourceName: \
         skao.int/oscilloscope\n          instanceID: \"0001\"\n",
    )
    .unwrap();
    let dir = umbrella.to_str().unwrap();
    helm(&["dependency", "update", dir]).unwrap();
    let docs = yaml_docs(&helm(&["template", "lab", dir, "--namespace", "lab"]).unwrap());
    let config = find(&docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let out = check_config(config, &[]).unwrap();
    assert!(out.contains("skao.int/oscilloscope (1 devices)"), "{out}");
    assert_eq!(env(&docs)["RUST_LOG"], "warn");
    assert_eq!(
        kind_name(find(&docs, "DaemonSet")).1,
        "lab-spookd-device-plugin"
    );
    // The condition turns it off; the schema checks the subchart's values under the alias.
    let off = helm(&["template", "lab", dir, "--set", "instruments.enabled=false"]).unwrap();
    assert!(!off.contains("kind: DaemonSet"), "{off}");
    let e = helm(&[
        "template",
        "lab",
        dir,
        "--set",
        "instruments.deviceMaping[0].hosts[0]=a",
    ])
    .unwrap_err();
    assert!(e.contains("deviceMaping"), "{e}");
    assert!(Path::new(&format!("{dir}/charts")).is_dir());
}

/// A values file in `tmp`, rendered; its error where it fails.
fn template_file(values: &str, extra: &[&str]) -> Result<Vec<Value>, String> {
    let tmp = TempDir::new();
    let path = tmp.join("values.yaml");
    std::fs::write(&path, values).unwrap();
    let mut args = vec!["template", "r", "charts/spookd", "--namespace", "lab", "-f"];
    let path = path.to_str().unwrap().to_owned();
    args.push(&path);
    args.extend(extra);
    helm(&args).map(|out| yaml_docs(&out))
}

fn config_of(docs: &[Value]) -> String {
    find(docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Quoted strings reach spookd as the strings they are, whatever YAML 1.1 or 1.2 would make of
/// them unquoted (the config is written as JSON); what Helm's own YAML 1.1 reading already
/// changed is refused where it would change the meaning: a key `Y` that became `true`, a number
/// past 2^53 that lost its last digits.
#[test]
fn values_keep_their_meaning_through_helms_yaml() {
    let docs = template_file(
        r#"
deviceMapping:
  - hosts: [h1]
    devices:
      - resourceName: a.io/x
        instanceID: "oFF"
        env: {A: "0017", B: "1.50", C: "0x1F", D: "yes", E: "~", F: "1_000", G: ".inf", H: "1e3"}
      - {resourceName: a.io/x, instanceID: "_1"}
      - {resourceName: a.io/x, instanceID: "0o17", healthCheck: null}
"#,
        &[],
    )
    .unwrap();
    let out = check_config(&config_of(&docs), &["--node-name", "h1"]).unwrap();
    for line in [
        "AIO_X_DEV0_ID=0o17",
        "AIO_X_DEV0_ID=_1",
        "AIO_X_DEV0_ID=oFF",
        "AIO_X_DEV0_A=0017",
        "AIO_X_DEV0_B=1.50",
        "AIO_X_DEV0_C=0x1F",
        "AIO_X_DEV0_D=yes",
        "AIO_X_DEV0_E=~",
        "AIO_X_DEV0_F=1_000",
        "AIO_X_DEV0_G=.inf",
        "AIO_X_DEV0_H=1e3",
    ] {
        assert!(out.contains(line), "{line} not in:\n{out}");
    }
    for (values, key) in [
        ("deviceMapping: [{hosts: [h], devices: [{resourceName: a.io/x, instanceID: '1', env: {Y: 1}}]}]", "true"),
        ("deviceMapping: [{hosts: [h], devices: [{resourceName: a.io/x, instanceID: '1', env: {off: 1}}]}]", "false"),
        ("deviceMapping: [{hosts: [h], devices: [{resourceName: a.io/x, instanceID: '1', env: {BIG: 100000000000000000000}}]}]", "BIG"),
    ] {
        let e = template_file(values, &[]).unwrap_err();
        assert!(e.contains(key) && e.contains("schema"), "{values}: {e}");
    }
}

/// What spookd or the kubelet would refuse after the install fails the render, with the reason.
#[test]
fn what_spookd_would_refuse_fails_the_install() {
    for (set, msg) in [
        ("exclusiveLeases.enabled=true,exclusiveLeases.duration=2h", "exclusiveLeases.duration: 2h is out of range: from 1s to 1h"),
        ("exclusiveLeases.enabled=true,exclusiveLeases.duration=500ms", "exclusiveLeases.duration: 500ms is out of range"),
        ("pruneStaleResources.enabled=true,pruneStaleResources.after=721h", "pruneStaleResources.after: 721h is out of range: from 1s to 720h"),
        ("serviceAccount.create=false", "serviceAccount.name is empty"),
        ("image.repository=artefact.skao.int/ska-ser-k8s-spookd", "the original spookd's image"),
        ("dra.enabled=true,dra.driverName=a12345678901234567890123456789012345678901234567890123456789.io,kubeletPath=/var/snap/microk8s/common/var/lib/kubelet", "a Unix socket's path holds at most 107"),
    ] {
        let e = helm(&["template", "r", "charts/spookd", "--set", set]).unwrap_err();
        assert!(e.contains(msg), "{set}: {e}");
    }
    // Within range, in any of spookd's forms.
    let docs = template(
        "r",
        &["--set", "exclusiveLeases.enabled=true,exclusiveLeases.duration=1.5m,serviceAccount.create=false,serviceAccount.name=lab-sa"],
    );
    assert_eq!(env(&docs)["SPOOKD_LEASE_DURATION"], "1.5m");
    assert_eq!(
        find(&docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"],
        "lab-sa"
    );
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceAccount"));
    for level in ["INFO,spookd=debug", "spookd::health=Trace", "Warning"] {
        let set = format!("daemon.logLevel={}", level.replace(',', "\\,"));
        template("r", &["--set-string", &set]);
    }
}

/// A device plugin and a DRA driver from one umbrella (two aliases of the chart), and one release
/// name in two namespaces: no two objects share a name, and no two DaemonSets a selector.
#[test]
fn releases_side_by_side_do_not_collide() {
    let dp = template("lab", &[]);
    let dra = template("lab", &["--set", "dra.enabled=true"]);
    let names = |docs: &[Value]| -> Vec<(String, String)> {
        docs.iter()
            .filter(|d| d["kind"] != "Pod")
            .map(kind_name)
            .collect()
    };
    let (a, b) = (names(&dp), names(&dra));
    let shared: Vec<&(String, String)> = a.iter().filter(|n| b.contains(n)).collect();
    assert!(shared.is_empty(), "{shared:?}");
    let selector = |docs: &[Value]| find(docs, "DaemonSet")["spec"]["selector"].clone();
    assert_ne!(selector(&dp), selector(&dra));
    assert_eq!(kind_name(find(&dra, "DaemonSet")).1, "lab-spookd-dra");
    // Cluster-scoped objects carry the namespace.
    let other = yaml_docs(
        &helm(&[
            "template",
            "lab",
            "charts/spookd",
            "--namespace",
            "other",
            "--set",
            "pruneStaleResources.enabled=true",
        ])
        .unwrap(),
    );
    let here = template("lab", &["--set", "pruneStaleResources.enabled=true"]);
    let cluster = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .map(|d| kind_name(d).1)
            .collect()
    };
    assert_eq!(
        cluster(&here),
        ["spookd:lab-spookd-device-plugin:prune-stale-resources"]
    );
    assert_eq!(
        cluster(&other),
        ["other:lab-spookd-device-plugin:prune-stale-resources"]
    );
}

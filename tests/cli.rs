//! The command line of the real binary: help, version, usage errors, `check`.

use std::process::Output;

use crate::util::{TempDir, SEED};

fn spookd(args: &[&str]) -> Output {
    crate::util::spookd_command()
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_lists_every_flag_and_its_environment_variable() {
    let out = spookd(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in [
        "--config",
        "SPOOKD_CONFIG",
        "/etc/spookd/config.yaml",
        "--node-name",
        "NODE_NAME",
        "--device-plugin-dir",
        "SPOOKD_DEVICE_PLUGIN_DIR",
        "/var/lib/kubelet/device-plugins",
        "--poll-interval",
        "SPOOKD_POLL_INTERVAL",
        "250ms",
        "spookd check [--node-name NAME] PATH",
        "RUST_LOG",
    ] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
}

#[test]
fn version() {
    let out = spookd(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!("spookd {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for (args, message) in [
        (&["--nope"][..], "spookd: unexpected argument \"--nope\" (see --help)\n"),
        (&["--poll-interval", "fast"][..], "spookd: --poll-interval: \"fast\" is not a positive duration (write e.g. 250ms, 2s, 1m or 1m30s)\n"),
        (&["check"][..], "spookd: check needs the PATH of a config\n"),
        (
            &["--config", "/c.yaml", "--configmap", "ns/cm", "--api-server", "https://127.0.0.1:1"][..],
            "spookd: --config and --configmap (or SPOOKD_CONFIG and SPOOKD_CONFIGMAP) exclude each other: choose the file or the API\n",
        ),
    ] {
        let out = spookd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stderr), message, "{args:?}");
    }
}

#[test]
fn check_prints_each_node_and_exits_0_for_a_valid_config() {
    let tmp = TempDir::new();
    let path = tmp.join("c.yaml");
    std::fs::write(&path, SEED).unwrap();
    let out = spookd(&["check", "--node-name", "node2", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "node node2:\n\
         \x20 example.com/thingamajig (1 devices)\n\
         \x20   0001\n\
         \x20     EXAMPLECOM_THINGAMAJIG_DEV0_ID=0001\n\
         \x20     EXAMPLECOM_THINGAMAJIG_DEV0_TYPE=example.com/thingamajig\n\
         \x20 example.com/widget (1 devices)\n\
         \x20   0001\n\
         \x20     EXAMPLECOM_WIDGET_DEV0_ID=0001\n\
         \x20     EXAMPLECOM_WIDGET_DEV0_IP=192.168.0.200\n\
         \x20     EXAMPLECOM_WIDGET_DEV0_PORT=12345\n\
         \x20     EXAMPLECOM_WIDGET_DEV0_TYPE=example.com/widget\n\
         config is valid: 3 nodes, 5 node resources\n\
         as a DRA driver (--dra): 3 devices, 3 DeviceClasses\n\
         \x20 deploy one mode per resource name: on a node where a device plugin also serves a \
         name, pods asking for it in resources.limits get the device plugin's devices, not DRA's \
         (--dra warns where it sees that)\n"
    );
    let clash_path = tmp.join("clash.yaml");
    std::fs::write(
        &clash_path,
        "deviceMapping:\n  - hosts: [n1]\n    devices:\n      - {resourceName: a.io/x, instanceID: A1}\n      - {resourceName: a.io/x, instanceID: a1}\n",
    )
    .unwrap();
    let clash = spookd(&["check", clash_path.to_str().unwrap()]);
    assert_eq!(clash.status.code(), Some(0));
    assert!(
        text(&clash.stdout).ends_with(
            "as a DRA driver (--dra) it would be refused: the config: a.io/x instanceID \"A1\" \
             and a.io/x instanceID \"a1\" both get the DRA device name x-a-io-a1 (names are \
             lower-cased, with other characters as '-'); rename one of them\n"
        ),
        "{}",
        text(&clash.stdout)
    );
    let all = text(&spookd(&["check", path.to_str().unwrap()]).stdout);
    assert!(
        all.starts_with("node node1:\n") && all.contains("node node3:\n  skao.int/oscilloscope"),
        "{all}"
    );
}

#[test]
fn check_exits_1_with_the_error_for_an_invalid_config() {
    let tmp = TempDir::new();
    let path = tmp.join("bad.yaml");
    std::fs::write(&path, "deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: example.com/widget, instanceID: 7}\n").unwrap();
    let out = spookd(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "spookd: invalid config: {}: deviceMapping[0].devices[0]",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "instanceID 7 must be a quoted string (YAML readers may take it for a number): write \
             instanceID: \"7\" at line 4 column 56"
        ),
        "{err}"
    );
    let out = spookd(&["check", tmp.join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read config"),
        "{}",
        text(&out.stderr)
    );
}

/// A config quoting a huge value in its error (an instanceID, an env key on the field's path, a
/// host, an unknown field, a string where a list goes) is one line of at most 1 KiB that keeps
/// the field's path, the rule and the line and column, never a 900 KB line.
#[test]
fn check_cuts_an_error_that_quotes_a_huge_value() {
    let tmp = TempDir::new();
    let big = "x".repeat(900_000);
    let head = "deviceMapping:\n- hosts: [a]\n  devices:\n  - resourceName: example.com/w\n";
    let cases = [
        (
            format!("{head}    instanceID: \"{big}\"\n"),
            "deviceMapping[0].devices[0].instanceID: invalid instanceID \"xxx",
            "xxx\": must be 1 to 63 characters at line 5 column 17",
        ),
        (
            format!("{head}    instanceID: \"1\"\n    env: {{K{big}: ~}}\n"),
            "deviceMapping[0].devices[0].env.Kxxx",
            "xxx: the env value is null (nothing, ~ or null), expected a string, number or \
             boolean: write \"\" for an empty value at line 6 column 900012",
        ),
        (
            format!("deviceMapping:\n- hosts: [\"{big}\"]\n  devices: []\n"),
            "deviceMapping[0].hosts: invalid host \"xxx",
            "xxx\": node names are lowercase DNS subdomains (letters, digits, '-' and '.') at \
             line 2 column 10",
        ),
        (
            // YAML's simple keys end at 1024 characters: an explicit key has none.
            format!("{head}    instanceID: \"1\"\n    ? {big}\n    : 1\n"),
            "deviceMapping[0].devices[0]: unknown field `xxx",
            "xxx`, expected one of `resourceName`, `instanceID`, `env`, `healthCheck` at line 6 \
             column 7",
        ),
        // Not a parse error: a clash of two 30,000-character env names, found after parsing.
        (
            {
                let k = "K".repeat(30_000);
                format!(
                    "deviceMapping:\n- hosts: [a]\n  devices:\n  - resourceName: a.io/x\n    \
                     instanceID: \"1\"\n    env:\n      ? Y_{k}\n      : v\n  - resourceName: \
                     a.io/x-y\n    instanceID: \"1\"\n    env:\n      ? {k}\n      : v\n"
                )
            },
            "env variable AIO_X_Y_KKK",
            "KKK could be set by both a.io/x and a.io/x-y (a container given both would get only \
             one value); rename a resource or an env key",
        ),
        (
            format!("deviceMapping:\n- hosts: \"{big}\"\n  devices: []\n"),
            "deviceMapping[0].hosts: invalid type: string \"xxx",
            "xxx\", expected a list of hosts at line 2 column 10",
        ),
    ];
    for (i, (config, starts, ends)) in cases.iter().enumerate() {
        let path = tmp.join(&format!("big{i}.yaml"));
        std::fs::write(&path, config).unwrap();
        let out = spookd(&["check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "case {i}");
        let err = text(&out.stderr);
        let err = err
            .strip_prefix(&format!("spookd: invalid config: {}: ", path.display()))
            .unwrap_or_else(|| panic!("case {i}: {}", &err[..200.min(err.len())]));
        assert!(err.len() <= 1024 + 1, "case {i}: {} bytes", err.len());
        assert!(err.starts_with(starts), "case {i}: {err}");
        assert!(err.trim_end().ends_with(ends), "case {i}: {err}");
        assert!(err.contains(" bytes cut]… "), "case {i}: {err}");
    }
}

/// `--help` exactly: rendered from the flag table, it must read as it always did (and name every
/// duration's range).
#[test]
fn help_is_exactly_the_documented_text() {
    let out = spookd(&["--help"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), HELP);
}

const HELP: &str = "spookd: a Kubernetes device plugin for virtual devices declared in YAML

Usage:
  spookd [OPTIONS]                       serve this node's devices to the kubelet
  spookd check [--node-name NAME] PATH   check a config; print each node's resources and devices
  spookd status [--metrics-addr ADDR:PORT] [--pod-resources-socket PATH] [--output json]
                                         what the running spookd serves: devices, health, holders
  spookd --help | --version

Options (each may instead come from the environment variable in brackets; a flag wins):
  --config PATH              config file, normally a key of a mounted ConfigMap
                             [SPOOKD_CONFIG] (default /etc/spookd/config.yaml)
  --node-name NAME           this node's name, as the config's hosts name it
                             [NODE_NAME] (default: the host name, lower-cased)
  --device-plugin-dir DIR    the kubelet's device-plugins directory (one spookd per directory: a
                             second waits for the first to stop)
                             [SPOOKD_DEVICE_PLUGIN_DIR] (default /var/lib/kubelet/device-plugins)
  --poll-interval DURATION   the longest wait between two reads of the config file (a change is
                             read at once, through inotify), e.g. 250ms, 2s, 1m, 1m30s
                             [SPOOKD_POLL_INTERVAL] (default 30s; from 10ms to 1h)

Config from a ConfigMap through the Kubernetes API instead of a file (not with --config):
  --configmap NAMESPACE/NAME  the ConfigMap to watch   [SPOOKD_CONFIGMAP]
  --configmap-key KEY        its key holding the config   [SPOOKD_CONFIGMAP_KEY] (default config.yaml)
  --api-server URL           https URL of the API server   [SPOOKD_API_SERVER]
                             (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)
  --token-file PATH          bearer token, re-read on every request   [SPOOKD_TOKEN_FILE]
                             (default /var/run/secrets/kubernetes.io/serviceaccount/token)
  --ca-file PATH             the only CA trusted for the API server   [SPOOKD_CA_FILE]
                             (default /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)
  --watch-timeout DURATION   how long one watch request lasts; a silent connection is dropped
                             after this plus a quarter   [SPOOKD_WATCH_TIMEOUT]
                             (default 1m; from 1s to 1h)

Removing resources spookd no longer serves from the node's status (needs RBAC on nodes; uses
--api-server, --token-file and --ca-file as above, with the same in-cluster defaults):
  --prune-stale-resources    remove a resource this spookd advertised and no longer serves from
                             the node's capacity and allocatable once the kubelet shows it at 0
                             [SPOOKD_PRUNE_STALE_RESOURCES=true] (default: off)
  --prune-after DURATION     how long after it stopped serving a resource spookd re-checks and
                             removes it   [SPOOKD_PRUNE_AFTER] (default 5m30s; from 1s to 720h)

Exclusive access to devices mapped to several hosts, through coordination.k8s.io Leases (uses
the API flags above; needs a Role on leases and the kubelet's podresources socket):
  --exclusive-leases         hold a shared device's Lease while a container on this node has it;
                             one held by another node is advertised Unhealthy here
                             [SPOOKD_EXCLUSIVE_LEASES=true] (default: off)
  --lease-namespace NS       where the Leases live   [SPOOKD_LEASE_NAMESPACE]
                             (default: the namespace of spookd's ServiceAccount)
  --lease-duration DURATION  how long a Lease lasts unrenewed   [SPOOKD_LEASE_DURATION]
                             (default 40s; from 1s to 1h)
  --pod-resources-socket PATH  the kubelet's podresources API   [SPOOKD_POD_RESOURCES_SOCKET]
                             (default /var/lib/kubelet/pod-resources/kubelet.sock)

A DRA driver instead of device-plugin servers (Kubernetes 1.34 or later; uses the API flags
above, and --lease-namespace and --lease-duration for the leader Lease):
  --dra                      run as a DRA driver: publish every device once in ResourceSlices (the
                             node holding the leader Lease publishes) and prepare claims for the
                             kubelet with CDI specs, instead of device-plugin servers
                             [SPOOKD_DRA=true] (default: off)
  --dra-driver NAME          the driver's name (a DNS subdomain); also the CDI vendor
                             [SPOOKD_DRA_DRIVER] (default spookd.dev)
  --kubelet-plugins-dir DIR  the plugin's socket goes in DIR/<driver>/dra.sock
                             [SPOOKD_KUBELET_PLUGINS_DIR] (default /var/lib/kubelet/plugins)
  --kubelet-registry-dir DIR  the kubelet's plugin registry   [SPOOKD_KUBELET_REGISTRY_DIR]
                             (default /var/lib/kubelet/plugins_registry)
  --cdi-dir DIR              where prepared claims' CDI specs are written   [SPOOKD_CDI_DIR]
                             (default /var/run/cdi)

Kubernetes Events (events.k8s.io/v1; uses the API flags above; needs create and patch on
events in the Pod's namespace, and in the ConfigMap's for the API source):
  --events                   write Kubernetes Events when a config is refused or applied and when
                             a device's health changes   [SPOOKD_EVENTS=true]
                             (default: on when the Pod and an API server are known)
  --pod-name NAME            spookd's own Pod, which the Events are about   [POD_NAME]
  --pod-namespace NS         its namespace, where the Events go   [POD_NAMESPACE]
  --pod-uid UID              its UID, so kubectl describe pod shows them   [POD_UID]

  --metrics-addr ADDR:PORT   serve /healthz, /readyz and Prometheus /metrics over HTTP there,
                             e.g. 0.0.0.0:9470   [SPOOKD_METRICS_ADDR] (default: off)
  -h, --help                 print this help
  -V, --version              print the version

`check` reads only its flag, not NODE_NAME: without --node-name it prints every node.
`status` asks the daemon at --metrics-addr (SPOOKD_METRICS_ADDR, as the daemon's; 0.0.0.0 is
asked on 127.0.0.1) and the kubelet's --pod-resources-socket for who holds each device.

Logging: RUST_LOG (default info; e.g. RUST_LOG=debug).
Exit status: 0 success; 1 error (for check: the config is invalid); 2 usage error.
";

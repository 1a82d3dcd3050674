//! The command line of the real binary: help, version, usage errors, `check`.

use std::process::{Command, Output};

use crate::util::{TempDir, SEED};

fn spookd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spookd"))
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
         config is valid: 3 nodes, 5 node resources\n"
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

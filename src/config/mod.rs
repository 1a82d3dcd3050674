//! The deviceMapping config: parsed once at the edge into checked types, so nothing past the
//! source handles an unchecked value.
//!
//! Stage one is serde (`raw.rs`): [`RawConfig`] mirrors the YAML with `deny_unknown_fields`, and
//! its leaves are already checked types (`names.rs`) whose `Deserialize` refuses bad values, so
//! serde_yaml reports them with their path (`deviceMapping[0].devices[1].instanceID`) and
//! line/column. Stage two (`check.rs`: `Config::check` behind [`Config::parse`]) applies the rules
//! that span several entries (one env and health check per device, env prefixes and env names that
//! must not collide across resources). Before either, the text is held to its bounds
//! (`bounds.rs`); while parsing, aliases spend a budget (`scope.rs`).

mod bounds;
mod check;
pub mod dra;
mod error;
pub mod layout;
mod model;
mod names;
mod pieces;
mod raw;
mod scope;
mod yaml_style;

pub use bounds::*;
pub use check::pieces_agree;
pub use error::{ConfigError, InvalidValue};
use model::Declaration;
pub use model::{Config, Device, Env, HealthCheck, NodeDevices, Placement};
pub use names::{
    is_dns_label, is_dns_subdomain, EnvKey, EnvValue, InstanceId, NodeName, ResourceName,
};
pub use raw::RawConfig;

/// What the tests of every stage parse with.
#[cfg(test)]
mod test_support {
    use super::*;

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text.as_bytes(), "test.yaml")
    }

    pub fn err(text: &str) -> String {
        parse(text).expect_err("config must be refused").to_string()
    }

    pub fn node(name: &str) -> NodeName {
        NodeName::try_from(name.to_owned()).unwrap()
    }

    pub fn ids(devices: &NodeDevices, resource: &str) -> Vec<String> {
        let r = ResourceName::try_from(resource.to_owned()).unwrap();
        devices[&r].iter().map(|d| d.id.to_string()).collect()
    }

    pub const SEED: &str = r#"
deviceMapping:
  - hosts: [lab1-host1, lab1-host2]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0002"
        env: {IP: 10.0.10.216}
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
        env: {IP: 10.0.10.215, PORT: 5025}
  - hosts: [lab1-host2]
    devices:
      - resourceName: skao.int/signal-generator
        instanceID: "sg-1"
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
        env: {PORT: 5025, IP: 10.0.10.215}
"#;

    pub fn device_with_id(id: &str) -> String {
        format!("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: {id}\n")
    }

    pub fn device_with_env(env: &str) -> String {
        format!("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env: {env}\n")
    }
}

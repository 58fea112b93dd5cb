//! The JSON of libnetwork's remote network driver protocol (moby's
//! `libnetwork/drivers/remote/api`, described in its `docs/remote.md`): what Docker posts to
//! `/NetworkDriver.*` and what it reads back. Field names are Go's (PascalCase).
//!
//! Go writes a nil slice or map as `null` and leaves out nothing, so every field here is
//! optional and `null` reads as empty: a request Docker's version shapes a little differently
//! still decodes, and what netfast needs is checked where it is used.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `null` or absent reads as the type's default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's driver options (`docker network create -o k=v` under
/// [`GENERIC_OPTIONS`], and libnetwork's own keys).
pub type Options = Map<String, Value>;

/// The key under which `docker network create -o …` options arrive.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// `docker network create --ipv6`.
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// `docker network create --internal`.
pub const INTERNAL: &str = "com.docker.network.internal";
/// The `-p` bindings of a container, in ProgramExternalConnectivity's options.
pub const PORT_MAP: &str = "com.docker.network.portmap";

/// The answer to `/Plugin.Activate`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Manifest {
    pub implements: Vec<&'static str>,
}

/// The answer to `/NetworkDriver.GetCapabilities`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Capabilities {
    /// "local": networks exist on this host only.
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

/// An address pool from Docker's IPAM.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    #[serde(deserialize_with = "null_default")]
    pub address_space: String,
    /// The subnet, `a.b.c.d/n`.
    #[serde(deserialize_with = "null_default")]
    pub pool: String,
    /// The gateway with the pool's prefix, `a.b.c.d/n`.
    #[serde(deserialize_with = "null_default")]
    pub gateway: String,
    #[serde(deserialize_with = "null_default")]
    pub aux_addresses: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(deserialize_with = "null_default")]
    pub options: Options,
    #[serde(rename = "IPv4Data", deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// DeleteNetwork's request.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_default")]
    pub network_id: String,
}

/// An endpoint's interface as Docker's IPAM gave it (CreateEndpoint), or as the driver
/// completes it (its answer).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInterface {
    /// `a.b.c.d/n`.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(deserialize_with = "null_default")]
    pub interface: Option<EndpointInterface>,
    #[serde(deserialize_with = "null_default")]
    pub options: Options,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    /// Only what Docker did not give (the MAC): libnetwork refuses a change of what it set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// DeleteEndpoint's, EndpointOperInfo's, Leave's and RevokeExternalConnectivity's request.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", deserialize_with = "null_default")]
    pub endpoint_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfoResponse {
    pub value: Map<String, Value>,
}

/// Join's and ProgramExternalConnectivity's request.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", deserialize_with = "null_default")]
    pub endpoint_id: String,
    /// The container's network namespace (Join only).
    #[serde(deserialize_with = "null_default")]
    pub sandbox_key: String,
    #[serde(deserialize_with = "null_default")]
    pub options: Options,
}

/// The interface Docker moves into the container: `SrcName` here, renamed `DstPrefix` and an
/// index (`eth0`) there.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    pub src_name: String,
    pub dst_prefix: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    /// The container's default route.
    pub gateway: String,
    pub disable_gateway_service: bool,
}

/// A `-p` binding (libnetwork's `types.PortBinding`). `HostPort` 0 asks for any free port,
/// and `HostPortEnd` above `HostPort` for any one of that range (`-p 8000-8010:80`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// The IP protocol number: 6 TCP, 17 UDP (132 SCTP).
    pub proto: u8,
    /// The container's address.
    #[serde(rename = "IP", deserialize_with = "null_default")]
    pub ip: String,
    pub port: u16,
    /// The host address; empty (or 0.0.0.0) for every address.
    #[serde(rename = "HostIP", deserialize_with = "null_default")]
    pub host_ip: String,
    pub host_port: u16,
    pub host_port_end: u16,
}

/// Any answer with an error: `{"Err": "…"}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResponse {
    pub err: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_nulls_and_missing_fields_read_as_empty() {
        let r: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"ab","Options":null,"IPv4Data":[{"AddressSpace":"LocalDefault",
            "Pool":"172.30.0.0/24","Gateway":"172.30.0.1/24","AuxAddresses":null}],"IPv6Data":null}"#,
        )
        .unwrap();
        assert_eq!(r.network_id, "ab");
        assert!(r.options.is_empty() && r.ipv6_data.is_empty());
        assert_eq!(r.ipv4_data[0].gateway, "172.30.0.1/24");
        let e: CreateEndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"ab","EndpointID":"cd","Interface":{"Address":"172.30.0.2/24",
            "AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.endpoint.exposedports":null}}"#,
        )
        .unwrap();
        assert_eq!(e.interface.unwrap().address, "172.30.0.2/24");
        let e: CreateEndpointRequest = serde_json::from_str(r#"{"Interface":null}"#).unwrap();
        assert!(e.interface.is_none());
        let b: Vec<PortBinding> = serde_json::from_str(
            r#"[{"Proto":6,"IP":"172.30.0.2","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]"#,
        )
        .unwrap();
        assert_eq!((b[0].proto, b[0].host_port, b[0].port), (6, 8080, 80));
    }

    #[test]
    fn answers_have_go_names_and_leave_out_what_docker_set() {
        let r = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:ac:1e:00:02".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Interface":{"MacAddress":"02:42:ac:1e:00:02"}}"#
        );
        let j = JoinResponse {
            interface_name: InterfaceName {
                src_name: "nfd1".into(),
                dst_prefix: "eth".into(),
            },
            gateway: "172.30.0.1".into(),
            disable_gateway_service: false,
        };
        assert_eq!(
            serde_json::to_string(&j).unwrap(),
            r#"{"InterfaceName":{"SrcName":"nfd1","DstPrefix":"eth"},"Gateway":"172.30.0.1","DisableGatewayService":false}"#
        );
    }
}

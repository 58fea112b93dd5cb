//! Links, addresses, routes and neighbours over rtnetlink, in the host namespace or in a
//! container's. A netlink socket belongs to the namespace it was opened in, so a handle for
//! another namespace is opened from a thread that has entered it.

use std::{fs::File, io, net::Ipv4Addr, os::fd::AsRawFd};

use futures::TryStreamExt;
use rtnetlink::{
    AddressGetRequest, Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec,
    LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{
            InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags,
            LinkInfo, LinkMessage,
        },
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    },
};
use tokio::runtime::Runtime;

use crate::error::{Error, Result};

/// A link as netfast needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The bridge it is enslaved to.
    pub controller: Option<u32>,
    pub up: bool,
    /// `bridge`, `veth`, … when the kernel says.
    pub kind: Option<String>,
    /// Its MAC address, for an Ethernet link.
    pub mac: Option<[u8; 6]>,
    /// Hairpin mode, for a bridge port.
    pub hairpin: Option<bool>,
    /// Its hardware type (`ARPHRD_*`): 1 for Ethernet, 772 for loopback, 65534 for a
    /// layer-3 device without a link-layer header (tun, wireguard), 768 for ipip.
    pub link_type: u16,
    /// Its alias (`ip link set … alias`): netfast's mark on the links it creates
    /// ([`super::intent::Mark`]).
    pub alias: Option<String>,
}

impl Link {
    /// Whether frames on it start with an Ethernet header.
    pub fn is_ethernet(&self) -> bool {
        self.link_type == libc::ARPHRD_ETHER
    }

    pub fn is_loopback(&self) -> bool {
        self.link_type == libc::ARPHRD_LOOPBACK
    }

    /// What kind of link it is, in words, for messages.
    pub fn describe_type(&self) -> String {
        let known = match self.link_type {
            libc::ARPHRD_ETHER => "Ethernet",
            libc::ARPHRD_LOOPBACK => "loopback",
            libc::ARPHRD_NONE => "layer 3, no link-layer header (tun, wireguard)",
            libc::ARPHRD_TUNNEL => "an IPIP tunnel",
            libc::ARPHRD_SIT => "a SIT tunnel",
            libc::ARPHRD_IPGRE => "a GRE tunnel",
            libc::ARPHRD_PPP => "PPP",
            _ => "",
        };
        if known.is_empty() {
            format!("link type {}", self.link_type)
        } else {
            format!("{known} (link type {})", self.link_type)
        }
    }
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: ipnet::Ipv4Net,
    /// The interface it leaves through, when it names one.
    pub oif: Option<u32>,
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        controller: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        mac: None,
        hairpin: None,
        link_type: u16::from(msg.header.link_layer_type),
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            link.hairpin = port.iter().find_map(|a| match a {
                                InfoBridgePort::HairpinMode(on) => Some(*on),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn failed(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let context = context.into();
    move |e| Error::Io {
        context,
        source: to_io(e),
    }
}

/// The runtime the netlink connections live on (one thread; netfast commands are sequential).
pub struct Netlink {
    rt: Runtime,
}

/// A netlink handle bound to one namespace.
pub struct Nl<'a> {
    rt: &'a Runtime,
    handle: Handle,
    /// Which namespace, for messages.
    pub place: String,
}

impl Netlink {
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| Error::Io {
                context: "starting the netlink runtime".into(),
                source,
            })?;
        Ok(Netlink { rt })
    }

    fn connect(&self) -> io::Result<Handle> {
        let _in_rt = self.rt.enter();
        let (connection, handle, _) = rtnetlink::new_connection()?;
        self.rt.spawn(connection);
        Ok(handle)
    }

    /// A handle in the calling thread's namespace (the host).
    pub fn host(&self) -> Result<Nl<'_>> {
        self.here("the host")
    }

    /// A handle in the calling thread's namespace, which messages call `place`.
    pub fn here(&self, place: &str) -> Result<Nl<'_>> {
        let handle = self.connect().map_err(|source| Error::Io {
            context: format!("opening a netlink socket in {place}"),
            source,
        })?;
        Ok(Nl {
            rt: &self.rt,
            handle,
            place: place.into(),
        })
    }

    /// A handle in the named namespace `name`.
    pub fn namespace(&self, name: &str) -> Result<Nl<'_>> {
        let handle = std::thread::scope(|s| {
            s.spawn(|| -> Result<Handle> {
                crate::netns::enter(name)?;
                self.connect().map_err(|source| Error::Io {
                    context: format!("opening a netlink socket in namespace {name}"),
                    source,
                })
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Settings("the namespace thread panicked".into())))
        })?;
        Ok(Nl {
            rt: &self.rt,
            handle,
            place: format!("namespace {name}"),
        })
    }
}

impl Nl<'_> {
    /// The link named `name`, if there is one.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut request = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match self.rt.block_on(request.try_next()) {
            Ok(msg) => Ok(msg.as_ref().map(link_of)),
            Err(rtnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(failed(format!("looking up link {name} in {}", self.place))(
                e,
            )),
        }
    }

    /// What `pick` takes of each message a dump `request` answers; `what` names the dump in
    /// an error.
    fn dump<M, T>(
        &self,
        request: impl futures::Stream<Item = std::result::Result<M, rtnetlink::Error>>,
        what: String,
        pick: impl FnMut(&M) -> Option<T>,
    ) -> Result<Vec<T>> {
        let msgs: Vec<M> = self
            .rt
            .block_on(request.try_collect())
            .map_err(failed(what))?;
        Ok(msgs.iter().filter_map(pick).collect())
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>> {
        let request = self.handle.link().get().execute();
        self.dump(request, format!("listing links in {}", self.place), |m| {
            Some(link_of(m))
        })
    }

    /// A bridge with the MAC `mac` (see `plumb::bridge_mac`): a bridge without a MAC of its
    /// own takes the lowest MAC of its ports and changes it as ports come and go, and the
    /// fast path's endpoints carry the gateway's MAC.
    pub fn add_bridge(&self, name: &str, mac: [u8; 6]) -> Result<Link> {
        self.rt
            .block_on(
                self.handle
                    .link()
                    .add(LinkBridge::new(name).address(mac.to_vec()).build())
                    .execute(),
            )
            .map_err(failed(format!("creating bridge {name}")))?;
        self.link(name)?
            .ok_or_else(|| Error::NoInterface(name.to_owned()))
    }

    /// A veth pair: `host_name` here, `peer_name` created directly in the namespace `ns`.
    pub fn add_veth_into(&self, host_name: &str, peer_name: &str, ns: &File) -> Result<Link> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_owned())
            .setns_by_fd(ns.as_raw_fd());
        self.add_veth(host_name, peer_name, peer)
    }

    /// A veth pair with both ends here, `peer_name` with MAC `peer_mac` (the kernel's choice
    /// when `None`), for another program to move into a namespace (Docker, for its
    /// containers). Returns the `host_name` end.
    pub fn add_veth_pair(
        &self,
        host_name: &str,
        peer_name: &str,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<Link> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(peer_name.to_owned());
        if let Some(mac) = peer_mac {
            peer = peer.address(mac.to_vec());
        }
        self.add_veth(host_name, peer_name, peer)
    }

    /// A veth pair, `host_name` here and the end `peer` describes (named `peer_name`).
    fn add_veth(
        &self,
        host_name: &str,
        peer_name: &str,
        peer: LinkMessageBuilder<LinkUnspec>,
    ) -> Result<Link> {
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_owned())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(failed(format!(
                "creating veth pair {host_name}/{peer_name}"
            )))?;
        self.link(host_name)?
            .ok_or_else(|| Error::NoInterface(host_name.to_owned()))
    }

    fn set(&self, msg: LinkMessage, what: String) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(failed(what))
    }

    pub fn set_up(&self, link: &Link) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index).up().build(),
            format!("setting {} up", link.name),
        )
    }

    /// Sets the link's alias (IFLA_IFALIAS).
    pub fn set_alias(&self, link: &Link, alias: &str) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index).alias(alias).build(),
            format!("setting the alias of {} in {}", link.name, self.place),
        )
    }

    pub fn set_mac(&self, link: &Link, mac: [u8; 6]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index)
                .address(mac.to_vec())
                .build(),
            format!("setting the MAC of {}", link.name),
        )
    }

    pub fn set_mtu(&self, link: &Link, mtu: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
            format!("setting the MTU of {}", link.name),
        )
    }

    pub fn set_controller(&self, link: &Link, bridge: &Link) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index)
                .controller(bridge.index)
                .build(),
            format!("putting {} on bridge {}", link.name, bridge.name),
        )
    }

    /// Lets the bridge send a frame back out of the port it came in on: with br_netfilter,
    /// a packet DNATed back to the container that sent it is bridged, not routed (Docker
    /// sets the same for its containers when it does hairpin NAT in netfilter).
    pub fn set_hairpin(&self, port: &Link, on: bool) -> Result<()> {
        self.rt
            .block_on(
                self.handle
                    .link()
                    .set_port(LinkBridgePort::new(port.index).hairpin(on).build())
                    .execute(),
            )
            .map_err(failed(format!(
                "turning hairpin mode {} for {}",
                if on { "on" } else { "off" },
                port.name
            )))
    }

    pub fn delete_link(&self, link: &Link) -> Result<()> {
        match self
            .rt
            .block_on(self.handle.link().del(link.index).execute())
        {
            Err(rtnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(())
            }
            other => other.map_err(failed(format!("deleting link {}", link.name))),
        }
    }

    pub fn add_address(&self, link: &Link, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.rt
            .block_on(
                self.handle
                    .address()
                    .add(link.index, ip.into(), prefix)
                    .execute(),
            )
            .map_err(failed(format!(
                "adding {ip}/{prefix} to {} in {}",
                link.name, self.place
            )))
    }

    /// The IPv4 addresses of a link, with their prefix lengths.
    pub fn addresses(&self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index);
        let what = format!("listing the addresses of {}", link.name);
        Ok(self
            .inet_addresses(request, what)?
            .into_iter()
            .filter(|(index, ..)| *index == link.index)
            .map(|(_, ip, prefix_len)| (ip, prefix_len))
            .collect())
    }

    pub fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        self.add_route(Ipv4Addr::UNSPECIFIED, 0, gateway)
    }

    /// A route to `dst/prefix` via `gateway`.
    pub fn add_route(&self, dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(gateway)
            .build();
        self.rt
            .block_on(self.handle.route().add(route).execute())
            .map_err(failed(format!(
                "adding a route to {dst}/{prefix} via {gateway} in {}",
                self.place
            )))
    }

    /// IPv4 neighbours (ARP entries) on a link: addresses seen in use there (entries still
    /// being resolved, or that failed to, are not).
    pub fn neighbours(&self, link: &Link) -> Result<Vec<Ipv4Addr>> {
        let request = self.handle.neighbours().get().execute();
        self.dump(
            request,
            format!("listing the neighbours of {}", link.name),
            |m| {
                if m.header.ifindex != link.index
                    || matches!(
                        m.header.state,
                        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
                    )
                {
                    return None;
                }
                m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })
            },
        )
    }
}

impl Nl<'_> {
    /// Every IPv4 address of this namespace with its prefix length and its link's index.
    pub fn address_nets(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let request = self.handle.address().get();
        self.inet_addresses(request, format!("listing the addresses of {}", self.place))
    }

    /// The IPv4 addresses a dump `request` answers, each with its link's index and prefix
    /// length.
    fn inet_addresses(
        &self,
        request: AddressGetRequest,
        what: String,
    ) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        self.dump(request.execute(), what, |m| {
            if m.header.family != AddressFamily::Inet {
                return None;
            }
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                    Some((m.header.index, *ip, m.header.prefix_len))
                }
                _ => None,
            })
        })
    }

    /// The IPv4 unicast routes of the main table (what `ip route` lists).
    pub fn routes(&self) -> Result<Vec<Route>> {
        use rtnetlink::packet_route::route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteType,
        };
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let request = self.handle.route().get(request).execute();
        self.dump(
            request,
            format!("listing the routes of {}", self.place),
            |m| {
                let main = m.header.address_family == AddressFamily::Inet
                    && m.header.kind == RouteType::Unicast
                    && m.attributes
                        .iter()
                        .find_map(|a| match a {
                            RouteAttribute::Table(t) => Some(*t),
                            _ => None,
                        })
                        .unwrap_or(u32::from(m.header.table))
                        == u32::from(RouteHeader::RT_TABLE_MAIN);
                if !main {
                    return None;
                }
                let dst = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                        _ => None,
                    })
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                let oif = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                let dst = ipnet::Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
                Some(Route { dst, oif })
            },
        )
    }

    /// Every IPv4 address of this namespace.
    pub fn all_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .address_nets()?
            .into_iter()
            .map(|(_, ip, _)| ip)
            .collect())
    }
}

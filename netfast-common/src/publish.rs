//! Published ports: `-p [HOST_IP:]HOST_PORT:CONTAINER:PORT`, one map entry per host port.

crate::map_type! {
    /// A host address and port clients connect to.
    #[derive(Default, Hash)]
    pub struct PubKey: 8 {
        /// Host address, network byte order; 0 for every address of the host.
        pub addr: u32,
        /// Host port, network byte order.
        pub port: u16,
        pub proto: u8,
        pub _pad: u8,
    }
}

crate::map_type! {
    /// Where a published port leads.
    #[derive(Default)]
    pub struct PubTarget: 12 {
        /// Container address and port, network byte order.
        pub addr: u32,
        pub port: u16,
        /// The container's network.
        pub net_id: u16,
        /// The allow-list of this publication in the allow map; 0 for "anyone".
        pub rule: u32,
    }
}

crate::map_type! {
    /// Allow-list entry: a rule and a client prefix (LPM over both; the rule is always matched
    /// whole, so the key's prefix length is 32 + the client prefix length).
    #[derive(Default)]
    pub struct AllowKey: 8 {
        /// The rule, network byte order (LPM compares bytes from the first).
        pub rule: u32,
        /// Client address, network byte order.
        pub addr: u32,
    }
}

crate::map_type! {
    /// The host namespace a dataplane serves: its socket-level programs see every process of
    /// the machine and act only on those in this namespace.
    #[derive(Default)]
    pub struct HostInfo: 8 {
        /// The host namespace's netns cookie (SO_NETNS_COOKIE); 0 until the loader writes it.
        pub netns_cookie: u64,
    }
}

crate::map_type! {
    /// What a host-local connect to a published port was translated from and to, per socket
    /// (keyed by socket cookie), so that getpeername/recvmsg can show the published address.
    #[derive(Default)]
    pub struct SockRevNat: 16 {
        /// The published address and port the process asked for, network byte order.
        pub orig_addr: u32,
        pub orig_port: u16,
        pub _pad: u16,
        /// The container address and port it was connected to instead.
        pub target_addr: u32,
        pub target_port: u16,
        pub _pad2: u16,
    }
}

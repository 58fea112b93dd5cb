//! nftables input as data: the commands `nft -j -f -` takes (libnftables' JSON schema), built
//! from typed pieces. Names and addresses are JSON strings here, never text that nft parses:
//! an interface name can be nothing but a name, whatever it holds (and names are validated
//! before they get here, see [`crate::loader::validate::interface_name`]).

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::loader::publish::Ports;

/// The family and name of netfast's table.
pub const FAMILY: &str = "ip";
pub const TABLE: &str = "netfast";

/// A match or value: the left or right side of a comparison.
#[derive(Clone, Debug)]
pub struct Expr(Value);

impl Expr {
    /// `meta KEY` (`iifname`, `oifname`, `l4proto`).
    pub fn meta(key: &str) -> Expr {
        Expr(json!({ "meta": { "key": key } }))
    }

    /// `PROTO FIELD`, a header field (`ip daddr`, `tcp dport`).
    pub fn payload(protocol: &str, field: &str) -> Expr {
        Expr(json!({ "payload": { "protocol": protocol, "field": field } }))
    }

    /// `ct KEY` (`state`, `status`).
    pub fn ct(key: &str) -> Expr {
        Expr(json!({ "ct": { "key": key } }))
    }

    /// `ct original KEY`.
    pub fn ct_original(key: &str) -> Expr {
        Expr(json!({ "ct": { "key": key, "dir": "original" } }))
    }

    /// `fib daddr type`.
    pub fn fib_daddr_type() -> Expr {
        Expr(json!({ "fib": { "result": "type", "flags": ["daddr"] } }))
    }

    /// A string: an interface name, a keyword value (`local`, `dnat`, `tcp`).
    pub fn str(s: &str) -> Expr {
        Expr(Value::String(s.to_owned()))
    }

    pub fn addr(a: std::net::Ipv4Addr) -> Expr {
        Expr(Value::String(a.to_string()))
    }

    pub fn prefix(net: Ipv4Net) -> Expr {
        Expr(json!({ "prefix": { "addr": net.network().to_string(), "len": net.prefix_len() } }))
    }

    pub fn ports(p: Ports) -> Expr {
        if p.first == p.last {
            Expr(json!(p.first))
        } else {
            Expr(json!({ "range": [p.first, p.last] }))
        }
    }

    /// An anonymous set `{ a, b }`.
    pub fn set(items: impl IntoIterator<Item = Expr>) -> Expr {
        Expr(json!({ "set": items.into_iter().map(|e| e.0).collect::<Vec<_>>() }))
    }

    /// A list of flags (`established, related`).
    pub fn flags(items: &[&str]) -> Expr {
        Expr(json!(items))
    }
}

/// One statement of a rule: a comparison or an action.
#[derive(Clone, Debug)]
pub struct Stmt(Value);

impl Stmt {
    fn compare(op: &str, left: Expr, right: Expr) -> Stmt {
        Stmt(json!({ "match": { "op": op, "left": left.0, "right": right.0 } }))
    }

    pub fn eq(left: Expr, right: Expr) -> Stmt {
        Stmt::compare("==", left, right)
    }

    pub fn ne(left: Expr, right: Expr) -> Stmt {
        Stmt::compare("!=", left, right)
    }

    /// Flags set (`ct status dnat`, `ct state established,related`).
    pub fn has(left: Expr, right: Expr) -> Stmt {
        Stmt::compare("in", left, right)
    }

    /// `counter name NAME`: a named counter of the table.
    pub fn counter(name: &str) -> Stmt {
        Stmt(json!({ "counter": name }))
    }

    pub fn accept() -> Stmt {
        Stmt(json!({ "accept": null }))
    }

    pub fn drop() -> Stmt {
        Stmt(json!({ "drop": null }))
    }

    pub fn jump(chain: &str) -> Stmt {
        Stmt(json!({ "jump": { "target": chain } }))
    }

    pub fn masquerade() -> Stmt {
        Stmt(json!({ "masquerade": null }))
    }

    /// `dnat to ADDR[:PORT]`.
    pub fn dnat(addr: std::net::Ipv4Addr, port: Option<Ports>) -> Stmt {
        match port {
            None => Stmt(json!({ "dnat": { "addr": addr.to_string() } })),
            Some(p) => {
                Stmt(json!({ "dnat": { "addr": addr.to_string(), "port": Expr::ports(p).0 } }))
            }
        }
    }
}

/// A base chain's hook: `type TYPE hook HOOK priority PRIO; policy accept`.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub kind: &'static str,
    pub hook: &'static str,
    pub prio: i32,
}

/// A batch of commands run as one transaction by `nft -j -f -`. nft runs them in order, so
/// every object (table, counters, chains) comes before the rules, which may refer to any.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    objects: Vec<Value>,
    rules: Vec<Value>,
}

impl Batch {
    fn add(&mut self, object: Value) {
        self.objects.push(json!({ "add": object }));
    }

    /// Adds the table (a no-op if it exists) and deletes it: what follows replaces it whole,
    /// whether or not it existed.
    pub fn reset_table(&mut self) {
        let table = json!({ "table": { "family": FAMILY, "name": TABLE } });
        self.objects.push(json!({ "add": table.clone() }));
        self.objects.push(json!({ "delete": table }));
    }

    pub fn table(&mut self) {
        self.add(json!({ "table": { "family": FAMILY, "name": TABLE } }));
    }

    /// A named counter starting at `packets` and `bytes` (carried over from the last table).
    pub fn counter(&mut self, name: &str, packets: u64, bytes: u64) {
        self.add(json!({ "counter": {
            "family": FAMILY, "table": TABLE, "name": name, "packets": packets, "bytes": bytes,
        } }));
    }

    /// A chain: a base chain with `hook`, else one that only jumps reach.
    pub fn chain(&mut self, name: &str, hook: Option<Hook>) {
        let mut chain = json!({ "family": FAMILY, "table": TABLE, "name": name });
        if let Some(h) = hook {
            chain["type"] = json!(h.kind);
            chain["hook"] = json!(h.hook);
            chain["prio"] = json!(h.prio);
            chain["policy"] = json!("accept");
        }
        self.add(json!({ "chain": chain }));
    }

    pub fn rule(&mut self, chain: &str, stmts: Vec<Stmt>) {
        self.rules.push(json!({ "add": { "rule": {
            "family": FAMILY, "table": TABLE, "chain": chain,
            "expr": stmts.into_iter().map(|s| s.0).collect::<Vec<_>>(),
        } } }));
    }

    /// The document `nft -j -f -` reads.
    pub fn to_json(&self) -> String {
        let all: Vec<&Value> = self.objects.iter().chain(&self.rules).collect();
        json!({ "nftables": all }).to_string()
    }
}

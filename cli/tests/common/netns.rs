//! Hosts with their own addresses on one machine: network namespaces on a bridge (`ip netns`,
//! veth pairs), so that a test can cut the link between two of them — with no reset, as a
//! partition does — and heal it. Needs root (CAP_NET_ADMIN); [`Lab::new`] says so when it
//! cannot make them.

use std::process::Command;

/// A bridge in a namespace of its own (away from the host's firewall rules) joining this
/// process's namespace (`.1`) and the hosts made by [`Lab::host`] (`.2`, `.3`, …) on
/// 10.213.N.0/24. Everything is deleted when dropped.
pub struct Lab {
    tag: String,
    subnet: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Adds or deletes, in namespace `ns` ("": this one), a route dropping what goes to `addr`.
fn blackhole(op: &str, ns: &str, addr: &str) {
    let dest = format!("{addr}/32");
    let mut args = Vec::new();
    if !ns.is_empty() {
        args.extend(["-n", ns]);
    }
    args.extend(["route", op, "blackhole", &dest]);
    must(&args);
}

impl Lab {
    /// The lab, or why it cannot be made here (not root, no `ip`).
    pub fn new() -> Result<Lab, String> {
        let n = std::process::id() % 200 + 20;
        let tag = format!("sp{n}");
        let lab = Lab {
            subnet: format!("10.213.{n}"),
            hosts: Vec::new(),
            tag: tag.clone(),
        };
        let sw = lab.switch();
        // Leftovers of an earlier run with the same process id.
        let _ = ip(&["netns", "del", &sw]);
        let _ = ip(&["link", "del", &format!("{tag}r")]);
        ip(&["netns", "add", &sw])?;
        must(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &sw, "link", "set", "br0", "up"]);
        let (outer, inner) = (format!("{tag}r"), format!("{tag}rb"));
        must(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        must(&["link", "set", &inner, "netns", &sw]);
        must(&["-n", &sw, "link", "set", &inner, "master", "br0", "up"]);
        must(&[
            "addr",
            "add",
            &format!("{}.1/24", lab.subnet),
            "dev",
            &outer,
        ]);
        must(&["link", "set", &outer, "up"]);
        Ok(lab)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.tag)
    }

    /// This process's address in the lab.
    pub fn own_addr(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A new host: its namespace's name and its address.
    pub fn host(&mut self) -> (String, String) {
        let i = self.hosts.len() + 2;
        let ns = format!("{}h{i}", self.tag);
        let addr = format!("{}.{i}", self.subnet);
        let (outer, inner) = (format!("{}h{i}b", self.tag), format!("{}h{i}e", self.tag));
        let sw = self.switch();
        must(&["netns", "add", &ns]);
        must(&["-n", &ns, "link", "set", "lo", "up"]);
        must(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        must(&["link", "set", &outer, "netns", &sw]);
        must(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"]);
        must(&["link", "set", &inner, "netns", &ns]);
        must(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ]);
        must(&["-n", &ns, "link", "set", &inner, "up"]);
        self.hosts.push(ns.clone());
        (ns, addr)
    }

    /// This process's namespace as a host ("" for `ip -n`: the current one).
    pub fn own(&self) -> (String, String) {
        (String::new(), self.own_addr())
    }

    /// Cuts the link between two hosts (namespace, address) both ways: their packets to each
    /// other are dropped silently (no reset, no error), as in a partition.
    pub fn cut(&self, a: (&str, &str), b: (&str, &str)) {
        blackhole("add", a.0, b.1);
        blackhole("add", b.0, a.1);
    }

    /// Heals a cut.
    pub fn heal(&self, a: (&str, &str), b: (&str, &str)) {
        blackhole("del", a.0, b.1);
        blackhole("del", b.0, a.1);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch()]) {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &format!("{}r", self.tag)]);
    }
}

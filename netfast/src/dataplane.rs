//! Loading the eBPF object and attaching its programs to interfaces.

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType},
};
use netfast_common::Hook;

use crate::{
    EBPF_OBJECT,
    error::{Error, Result},
    stats::{self, Stats},
};

/// What an interface is to a netfast network; it decides which programs it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceRole {
    /// The Linux bridge the containers' veths are enslaved to.
    Bridge,
    /// The interface towards the outside.
    Uplink,
}

impl InterfaceRole {
    /// The hooks this role gets: (ingress, egress).
    pub const fn hooks(self) -> [Hook; 2] {
        match self {
            InterfaceRole::Bridge => [Hook::BridgeIngress, Hook::BridgeEgress],
            InterfaceRole::Uplink => [Hook::UplinkIngress, Hook::UplinkEgress],
        }
    }
}

pub(crate) const fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::BridgeIngress | Hook::UplinkIngress => TcAttachType::Ingress,
        Hook::BridgeEgress | Hook::UplinkEgress => TcAttachType::Egress,
    }
}

/// Loads the embedded object and every TC program in it, with fresh (unpinned) maps.
pub(crate) fn load_object() -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
    for hook in Hook::ALL {
        classifier(&mut ebpf, hook)?
            .load()
            .map_err(|e| Error::program(hook.name(), e))?;
    }
    Ok(ebpf)
}

pub(crate) fn classifier(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    let name = hook.name();
    let program = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
    program.try_into().map_err(|e| Error::program(name, e))
}

/// The loaded dataplane: programs, maps and the attachments it owns. Dropping it detaches
/// every program it attached.
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads every program and map into the kernel (of the calling thread's network namespace).
    pub fn load() -> Result<Self> {
        Ok(Dataplane {
            ebpf: load_object()?,
        })
    }

    /// Attaches the programs of `role` to both directions of `interface` (TCX).
    pub fn attach(&mut self, interface: &str, role: InterfaceRole) -> Result<()> {
        for hook in role.hooks() {
            classifier(&mut self.ebpf, hook)?
                .attach(interface, attach_type(hook))
                .map_err(|e| Error::Attach {
                    program: hook.name(),
                    interface: interface.to_owned(),
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// The counters, summed over all CPUs.
    pub fn stats(&self) -> Result<Stats> {
        stats::of(&self.ebpf)
    }
}

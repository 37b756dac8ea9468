//! MSI-X of a passed-through function: the emulated table ([`MsixState`]) wired to KVM
//! (one GSI + irqfd per vector) and to VFIO (one eventfd per vector).
//!
//! vfio-pci cannot mask single MSI-X vectors, so masking is ours: a masked vector's irqfd is
//! detached and its interrupts wait in the eventfd; unmasking re-attaches the irqfd, and KVM
//! delivers what was waiting. The route is always updated before the irqfd is attached, so a
//! vector never fires with a stale message.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{VfioBackend, VmPlatform};
use crate::msix::{MsixLayout, MsixState, VectorChange};

#[derive(Debug, thiserror::Error)]
pub enum MsixRoutingError {
    #[error("cannot create an eventfd for MSI-X vector {vector}: {source}")]
    EventFd { vector: u16, source: std::io::Error },
    #[error("cannot allocate a GSI for MSI-X vector {vector}: {reason}")]
    Gsi { vector: u16, reason: String },
}

pub struct MsixRouting {
    pub layout: MsixLayout,
    pub state: MsixState,
    gsis: Vec<u32>,
    eventfds: Vec<EventFd>,
    attached: Vec<bool>,
    vfio_enabled: bool,
    backend: Arc<dyn VfioBackend>,
    platform: Arc<dyn VmPlatform>,
}

impl MsixRouting {
    pub fn new(
        layout: MsixLayout,
        backend: Arc<dyn VfioBackend>,
        platform: Arc<dyn VmPlatform>,
    ) -> Result<Self, MsixRoutingError> {
        let mut gsis = Vec::with_capacity(usize::from(layout.vectors));
        let mut eventfds = Vec::with_capacity(usize::from(layout.vectors));
        for vector in 0..layout.vectors {
            gsis.push(platform.allocate_gsi().map_err(|reason| MsixRoutingError::Gsi { vector, reason })?);
            eventfds.push(EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MsixRoutingError::EventFd { vector, source })?);
        }
        Ok(Self {
            layout,
            state: MsixState::new(layout.vectors),
            gsis,
            attached: vec![false; usize::from(layout.vectors)],
            eventfds,
            vfio_enabled: false,
            backend,
            platform,
        })
    }

    pub fn gsis(&self) -> &[u32] {
        &self.gsis
    }

    fn apply(&mut self, changes: Vec<VectorChange>) {
        for change in changes {
            match change {
                VectorChange::Route { vector, message } => {
                    let v = usize::from(vector);
                    if let Err(e) = self.platform.set_msi_route(self.gsis[v], message) {
                        log::warn!("MSI-X vector {vector}: cannot route: {e}");
                        continue;
                    }
                    if !self.attached[v] {
                        match self.platform.attach_irqfd(&self.eventfds[v], self.gsis[v]) {
                            Ok(()) => self.attached[v] = true,
                            Err(e) => log::warn!("MSI-X vector {vector}: cannot attach irqfd: {e}"),
                        }
                    }
                    self.state.set_pending(vector, false);
                }
                VectorChange::Mask { vector } => {
                    let v = usize::from(vector);
                    if self.attached[v] {
                        if let Err(e) = self.platform.detach_irqfd(&self.eventfds[v], self.gsis[v]) {
                            log::warn!("MSI-X vector {vector}: cannot detach irqfd: {e}");
                        }
                        self.attached[v] = false;
                    }
                }
            }
        }
    }

    /// Guest write of Message Control.
    pub fn set_control(&mut self, control: u16) {
        let was_enabled = self.state.enabled();
        let changes = self.state.set_control(control);
        if self.state.enabled() && !self.vfio_enabled {
            let fds: Vec<&EventFd> = self.eventfds.iter().collect();
            match self.backend.enable_msix(&fds) {
                Ok(()) => self.vfio_enabled = true,
                Err(e) => log::warn!("cannot enable MSI-X on the device: {e}"),
            }
        }
        self.apply(changes);
        if was_enabled && !self.state.enabled() && self.vfio_enabled {
            if let Err(e) = self.backend.disable_msix() {
                log::warn!("cannot disable MSI-X on the device: {e}");
            }
            self.vfio_enabled = false;
        }
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        self.state.table_read(offset, data);
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let changes = self.state.table_write(offset, data);
        self.apply(changes);
    }

    /// PBA read: a masked vector whose eventfd fired shows as pending. The count is put back
    /// so that unmasking still delivers it.
    pub fn pba_read(&mut self, offset: u64, data: &mut [u8]) {
        for v in 0..self.state.vectors() {
            let i = usize::from(v);
            if !self.attached[i] {
                if let Ok(count) = self.eventfds[i].read() {
                    self.state.set_pending(v, true);
                    let _ = self.eventfds[i].write(count);
                }
            }
        }
        self.state.pba_read(offset, data);
    }

    /// Tears everything down (device removal, VM exit).
    pub fn shutdown(&mut self) {
        self.set_control(0);
    }
}

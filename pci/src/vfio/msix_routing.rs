//! MSI-X of a passed-through function: the emulated table ([`MsixState`]) wired to KVM
//! (one GSI + irqfd per vector) and to VFIO (one eventfd per vector).
//!
//! vfio-pci cannot mask single MSI-X vectors, so masking is ours: a masked vector's irqfd is
//! detached and its interrupts wait in the eventfd; unmasking re-attaches the irqfd, and KVM
//! delivers what was waiting. The route is always updated before the irqfd is attached, so a
//! vector never fires with a stale message.
//!
//! "Unmasked by the guest" and "irqfd attached" are separate: a quiesced device (VM paused)
//! has every irqfd detached whatever the guest's masks say, and its arrivals wait (and show in
//! the PBA) until it is unquiesced. A released device keeps its eventfds, GSIs and routes; only
//! VFIO's side goes, and [`MsixRouting::rebind`] hands the same eventfds to the new device.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{VfioBackend, VmPlatform};
use crate::msi::{MsiCapability, MsiState};
use crate::msix::{MsixLayout, MsixState, VectorChange};

#[derive(Debug, thiserror::Error)]
pub enum MsixRoutingError {
    #[error("cannot create an eventfd for MSI-X vector {vector}: {source}")]
    EventFd { vector: u16, source: std::io::Error },
    #[error("cannot allocate a GSI for MSI-X vector {vector}: {reason}")]
    Gsi { vector: u16, reason: String },
    #[error("cannot enable interrupts on the device: {0}")]
    Vfio(String),
}

/// One GSI, eventfd and irqfd per vector, shared by the MSI-X and MSI paths.
pub struct VectorRoutes {
    gsis: Vec<u32>,
    eventfds: Vec<EventFd>,
    /// The guest has the vector effectively unmasked (its route is programmed).
    unmasked: Vec<bool>,
    /// The vector's irqfd is attached to its GSI.
    attached: Vec<bool>,
    /// Quiesced: no irqfd is attached, whatever the guest unmasked.
    quiesced: bool,
    platform: Arc<dyn VmPlatform>,
}

impl VectorRoutes {
    pub fn new(vectors: u16, platform: Arc<dyn VmPlatform>) -> Result<Self, MsixRoutingError> {
        let n = usize::from(vectors);
        // Filled one vector at a time: on failure, dropping it gives back what was taken.
        let mut routes = Self {
            gsis: Vec::with_capacity(n),
            eventfds: Vec::with_capacity(n),
            unmasked: vec![false; n],
            attached: vec![false; n],
            quiesced: false,
            platform,
        };
        for vector in 0..vectors {
            let eventfd =
                EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MsixRoutingError::EventFd { vector, source })?;
            let gsi = routes.platform.allocate_gsi().map_err(|reason| MsixRoutingError::Gsi { vector, reason })?;
            routes.gsis.push(gsi);
            routes.eventfds.push(eventfd);
        }
        Ok(routes)
    }

    pub fn gsis(&self) -> &[u32] {
        &self.gsis
    }

    pub fn eventfds(&self, n: usize) -> Vec<&EventFd> {
        self.eventfds.iter().take(n).collect()
    }

    fn attach(&mut self, v: usize) {
        if self.attached[v] {
            return;
        }
        match self.platform.attach_irqfd(&self.eventfds[v], self.gsis[v]) {
            Ok(()) => self.attached[v] = true,
            Err(e) => devices::warn_guest!("vector {v}: cannot attach irqfd: {e}"),
        }
    }

    fn detach(&mut self, v: usize) {
        if !self.attached[v] {
            return;
        }
        if let Err(e) = self.platform.detach_irqfd(&self.eventfds[v], self.gsis[v]) {
            devices::warn_guest!("vector {v}: cannot detach irqfd: {e}");
        }
        self.attached[v] = false;
    }

    /// Route first, then attach: a vector never fires with a stale message.
    pub fn apply(&mut self, changes: Vec<VectorChange>) -> Vec<u16> {
        let mut routed = Vec::new();
        for change in changes {
            match change {
                VectorChange::Route { vector, message } => {
                    let v = usize::from(vector);
                    if let Err(e) = self.platform.set_msi_route(self.gsis[v], message) {
                        devices::warn_guest!("MSI-X vector {vector}: cannot route: {e}");
                        continue;
                    }
                    self.unmasked[v] = true;
                    if !self.quiesced {
                        self.attach(v);
                    }
                    routed.push(vector);
                }
                VectorChange::Mask { vector } => {
                    let v = usize::from(vector);
                    self.unmasked[v] = false;
                    self.detach(v);
                }
            }
        }
        routed
    }

    /// Detaches every irqfd: arrivals wait in the eventfds.
    pub fn quiesce(&mut self) {
        self.quiesced = true;
        for v in 0..self.attached.len() {
            self.detach(v);
        }
    }

    /// Re-attaches the irqfds of the vectors the guest has unmasked; KVM delivers what waited
    /// in each eventfd once. With `kick`, each of those vectors is raised once as well (see
    /// `VfioPciDevice::unquiesce`).
    pub fn unquiesce(&mut self, kick: bool) {
        self.quiesced = false;
        if kick {
            self.kick();
        }
        for v in 0..self.unmasked.len() {
            if self.unmasked[v] {
                self.attach(v);
            }
        }
    }

    /// Raises every vector the guest has unmasked once (a spurious interrupt a driver
    /// handles by looking at its device).
    pub fn kick(&self) {
        for v in (0..self.unmasked.len()).filter(|&v| self.unmasked[v]) {
            if let Err(e) = self.eventfds[v].write(1) {
                devices::warn_guest!("vector {v}: cannot raise: {e}");
            }
        }
    }

    pub fn attached(&self, v: usize) -> bool {
        self.attached[v]
    }

    /// Whether vector `v`'s eventfd fired while its irqfd was detached. The count is put back
    /// so that attaching the irqfd still delivers it.
    pub fn fired_while_masked(&self, v: usize) -> bool {
        if self.attached[v] {
            return false;
        }
        match self.eventfds[v].read() {
            Ok(count) => {
                let _ = self.eventfds[v].write(count);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for VectorRoutes {
    /// The device is gone: its irqfds come off and its GSIs and routes go back to the VM (a
    /// VM that attaches and detaches devices for ever must not run out of either).
    fn drop(&mut self) {
        for v in 0..self.gsis.len() {
            self.detach(v);
        }
        self.platform.release_gsis(&self.gsis);
    }
}

/// What the device's lifecycle does to an interrupt capability's routing (MSI-X or MSI).
pub trait InterruptRouting {
    /// Device removal or VM exit: interrupts off everywhere.
    fn shutdown(&mut self);
    /// Irqfds detached; arrivals wait in the eventfds.
    fn quiesce(&mut self);
    /// Irqfds of the guest-unmasked vectors attached again; with `kick`, each raised once.
    fn unquiesce(&mut self, kick: bool);
    /// The host device goes: VFIO's side off; the emulated state stays.
    fn release(&mut self);
    /// A new host device: VFIO's side on again, as the guest had it.
    fn rebind(&mut self) -> Result<(), MsixRoutingError>;
    /// Each vector the guest has unmasked raised once.
    fn kick(&self);
}

pub struct MsixRouting {
    pub layout: MsixLayout,
    pub state: MsixState,
    routes: VectorRoutes,
    vfio_enabled: bool,
    backend: Arc<dyn VfioBackend>,
}

impl MsixRouting {
    pub fn new(
        layout: MsixLayout,
        backend: Arc<dyn VfioBackend>,
        platform: Arc<dyn VmPlatform>,
    ) -> Result<Self, MsixRoutingError> {
        Ok(Self {
            layout,
            state: MsixState::new(layout.vectors),
            routes: VectorRoutes::new(layout.vectors, platform)?,
            vfio_enabled: false,
            backend,
        })
    }

    pub fn gsis(&self) -> &[u32] {
        self.routes.gsis()
    }

    fn apply(&mut self, changes: Vec<VectorChange>) {
        for vector in self.routes.apply(changes) {
            self.state.set_pending(vector, false);
        }
    }

    /// Guest write of Message Control.
    pub fn set_control(&mut self, control: u16) {
        let was_enabled = self.state.enabled();
        let changes = self.state.set_control(control);
        if self.state.enabled() && !self.vfio_enabled {
            let fds = self.routes.eventfds(usize::from(self.layout.vectors));
            match self.backend.enable_msix(&fds) {
                Ok(()) => self.vfio_enabled = true,
                Err(e) => devices::warn_guest!("cannot enable MSI-X on the device: {e}"),
            }
        }
        self.apply(changes);
        if was_enabled && !self.state.enabled() && self.vfio_enabled {
            if let Err(e) = self.backend.disable_msix() {
                devices::warn_guest!("cannot disable MSI-X on the device: {e}");
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
            if self.routes.fired_while_masked(usize::from(v)) {
                self.state.set_pending(v, true);
            }
        }
        self.state.pba_read(offset, data);
    }

    pub fn routes(&self) -> &VectorRoutes {
        &self.routes
    }
}

impl InterruptRouting for MsixRouting {
    fn shutdown(&mut self) {
        self.set_control(0);
    }

    fn quiesce(&mut self) {
        self.routes.quiesce();
    }

    fn unquiesce(&mut self, kick: bool) {
        self.routes.unquiesce(kick);
    }

    fn kick(&self) {
        self.routes.kick();
    }

    /// VFIO's MSI-X off. The table, routes and eventfds stay.
    fn release(&mut self) {
        if self.vfio_enabled {
            if let Err(e) = self.backend.disable_msix() {
                devices::warn_guest!("cannot disable MSI-X on the device: {e}");
            }
            self.vfio_enabled = false;
        }
    }

    /// MSI-X on again, with the same eventfds, if the guest had it on.
    fn rebind(&mut self) -> Result<(), MsixRoutingError> {
        if self.state.enabled() && !self.vfio_enabled {
            let fds = self.routes.eventfds(usize::from(self.layout.vectors));
            self.backend.enable_msix(&fds).map_err(|e| MsixRoutingError::Vfio(e.to_string()))?;
            self.vfio_enabled = true;
        }
        Ok(())
    }
}

/// MSI of a passed-through function: the emulated capability wired like MSI-X.
pub struct MsiRouting {
    pub state: MsiState,
    routes: VectorRoutes,
    /// Vectors VFIO was enabled with (0: disabled).
    vfio_vectors: u8,
    backend: Arc<dyn VfioBackend>,
}

impl MsiRouting {
    pub fn new(
        cap: MsiCapability,
        device_control: u16,
        backend: Arc<dyn VfioBackend>,
        platform: Arc<dyn VmPlatform>,
    ) -> Result<Self, MsixRoutingError> {
        Ok(Self {
            state: MsiState::new(cap, device_control),
            routes: VectorRoutes::new(u16::from(cap.max_vectors), platform)?,
            vfio_vectors: 0,
            backend,
        })
    }

    /// Guest write of capability dword `index` (already merged to a full dword).
    pub fn write(&mut self, index: usize, value: u32) {
        let changes = self.state.write(index, value);
        let wanted = if self.state.enabled() { self.state.vectors() } else { 0 };
        if wanted != self.vfio_vectors {
            if self.vfio_vectors != 0 {
                if let Err(e) = self.backend.disable_msi() {
                    devices::warn_guest!("cannot disable MSI on the device: {e}");
                }
                self.vfio_vectors = 0;
            }
            if wanted != 0 {
                match self.backend.enable_msi(&self.routes.eventfds(usize::from(wanted))) {
                    Ok(()) => self.vfio_vectors = wanted,
                    Err(e) => devices::warn_guest!("cannot enable MSI on the device: {e}"),
                }
            }
        }
        self.routes.apply(changes);
    }
}

impl InterruptRouting for MsiRouting {
    fn shutdown(&mut self) {
        self.write(0, 0);
    }

    fn quiesce(&mut self) {
        self.routes.quiesce();
    }

    fn unquiesce(&mut self, kick: bool) {
        self.routes.unquiesce(kick);
    }

    fn kick(&self) {
        self.routes.kick();
    }

    /// VFIO's MSI off; the capability state stays.
    fn release(&mut self) {
        if self.vfio_vectors != 0 {
            if let Err(e) = self.backend.disable_msi() {
                devices::warn_guest!("cannot disable MSI on the device: {e}");
            }
            self.vfio_vectors = 0;
        }
    }

    /// MSI on again with the same eventfds, if the guest had it on.
    fn rebind(&mut self) -> Result<(), MsixRoutingError> {
        let wanted = if self.state.enabled() { self.state.vectors() } else { 0 };
        if wanted != 0 && self.vfio_vectors == 0 {
            self.backend
                .enable_msi(&self.routes.eventfds(usize::from(wanted)))
                .map_err(|e| MsixRoutingError::Vfio(e.to_string()))?;
            self.vfio_vectors = wanted;
        }
        Ok(())
    }
}

//! Coalesced port writes: for a few ports, KVM queues the guest's writes in a ring shared with
//! vfvmm instead of exiting to it, and the vCPU threads replay them, in the guest's order,
//! before they handle the next I/O exit.
//!
//! The port coalesced is the PCI conf1 address register (0xCF8): Linux reaches the first 256
//! bytes of every device's config space through it, writing the address there before the
//! access to the data port (0xCFC) that does exit. A config access then costs one exit to
//! vfvmm instead of two. Reads are never queued, and a read of 0xCF8 exits like any access:
//! the queue is replayed first, so the guest always reads what it wrote.
//!
//! KVM keeps one ring per VM (`KVM_REGISTER_COALESCED_MMIO` with `pio = 1`, mapped from a
//! vCPU fd at `KVM_COALESCED_MMIO_PAGE_OFFSET`); when it is full, writes exit as usual.

use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};

/// `(first port, ports)` whose guest writes KVM queues: the PCI conf1 address register.
pub const COALESCED_PORTS: [(u16, u32); 1] = [(0xcf8, 4)];

#[derive(Debug, thiserror::Error)]
pub enum CoalescedIoError {
    #[error("KVM cannot queue port writes (no KVM_CAP_COALESCED_PIO)")]
    Unsupported,
    #[error("cannot map KVM's ring of queued writes: {0}")]
    Map(std::io::Error),
    #[error("cannot queue writes to port {port:#x}: {source}")]
    Register { port: u16, source: kvm_ioctls::Error },
}

/// One guest write KVM queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedWrite {
    /// A port write (else MMIO).
    pub pio: bool,
    pub addr: u64,
    len: usize,
    data: [u8; 8],
}

impl QueuedWrite {
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// The VM's ring of queued writes.
pub struct CoalescedRing {
    ring: NonNull<kvm_coalesced_mmio_ring>,
    /// Entries the ring holds (KVM's `KVM_COALESCED_MMIO_MAX` for this page size).
    capacity: u32,
    /// The mapping to give back on drop (`None`: memory owned elsewhere, in tests).
    mapping: Option<usize>,
    /// Replays are serialized: entries leave the ring only after they were delivered, so a
    /// vCPU that finds the ring busy waits until everything queued before its exit is replayed.
    replaying: Mutex<()>,
    /// Set when the indices were found outside the ring (not a state KVM produces): the ring
    /// is not read again, rather than read outside its page.
    corrupt: AtomicBool,
}

// SAFETY: the ring page is shared with the kernel by design; this type only touches it through
// atomic loads/stores of the indices and volatile reads of entries, and replays are serialized
// by `replaying`, so sharing it between the vCPU threads is sound.
unsafe impl Send for CoalescedRing {}
// SAFETY: as above.
unsafe impl Sync for CoalescedRing {}

impl CoalescedRing {
    /// Maps the VM's ring through `vcpu` and asks KVM to queue writes to [`COALESCED_PORTS`].
    /// On error nothing is registered: those writes keep exiting.
    pub fn setup(kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd) -> Result<Self, CoalescedIoError> {
        if !kvm.check_extension(Cap::CoalescedPio) {
            return Err(CoalescedIoError::Unsupported);
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(CoalescedIoError::Map(std::io::Error::last_os_error())),
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a fresh shared mapping of one page of the vCPU fd at the offset KVM documents
        // for the coalesced ring; the result is checked, and the mapping is only given back in
        // Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(CoalescedIoError::Map(std::io::Error::last_os_error()));
        }
        let ring = NonNull::new(addr.cast::<kvm_coalesced_mmio_ring>())
            .ok_or_else(|| CoalescedIoError::Map(std::io::Error::other("mmap returned null")))?;
        // Dropped (unmapped) on any error below, before anything is queued in it.
        let this = Self {
            ring,
            capacity: Self::capacity_of(page_size),
            mapping: Some(page_size),
            replaying: Mutex::new(()),
            corrupt: AtomicBool::new(false),
        };
        for (i, &(port, len)) in COALESCED_PORTS.iter().enumerate() {
            if let Err(source) = vm.register_coalesced_mmio(IoEventAddress::Pio(u64::from(port)), len) {
                for &(done, len) in &COALESCED_PORTS[..i] {
                    let _ = vm.unregister_coalesced_mmio(IoEventAddress::Pio(u64::from(done)), len);
                }
                return Err(CoalescedIoError::Register { port, source });
            }
        }
        Ok(this)
    }

    /// How many entries a ring in a page of `page_size` bytes holds.
    fn capacity_of(page_size: usize) -> u32 {
        ((page_size - size_of::<kvm_coalesced_mmio_ring>()) / size_of::<kvm_coalesced_mmio>()) as u32
    }

    fn first(&self) -> &AtomicU32 {
        // SAFETY: `first` is an aligned u32 inside the live ring page; vfvmm writes it, KVM reads
        // it: atomic access is the shared-memory protocol.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.ring.as_ptr()).first)) }
    }

    fn last(&self) -> &AtomicU32 {
        // SAFETY: as for `first`; KVM writes `last` after the entry it publishes.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.ring.as_ptr()).last)) }
    }

    /// Hands every queued write to `deliver`, oldest first; returns how many there were.
    pub fn replay(&self, mut deliver: impl FnMut(QueuedWrite)) -> usize {
        if self.corrupt.load(Ordering::Relaxed)
            || self.first().load(Ordering::Acquire) == self.last().load(Ordering::Acquire)
        {
            return 0;
        }
        let _serialized = self.replaying.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut replayed = 0;
        loop {
            let first = self.first().load(Ordering::Relaxed);
            let last = self.last().load(Ordering::Acquire);
            if first == last {
                break;
            }
            if first >= self.capacity || last >= self.capacity {
                log::error!(
                    "KVM's ring of queued writes is out of bounds (first {first}, last {last}); not reading it again"
                );
                self.corrupt.store(true, Ordering::Relaxed);
                break;
            }
            // SAFETY: `first < capacity`, so the entry lies inside the ring page; KVM published it
            // before the `last` we loaded with Acquire and does not touch it until `first` moves.
            let entry = unsafe {
                std::ptr::read_volatile(
                    self.ring
                        .as_ptr()
                        .cast::<u8>()
                        .add(size_of::<kvm_coalesced_mmio_ring>())
                        .cast::<kvm_coalesced_mmio>()
                        .add(first as usize),
                )
            };
            // SAFETY: both union members are a plain u32.
            let pio = unsafe { entry.__bindgen_anon_1.pio } == 1;
            deliver(QueuedWrite { pio, addr: entry.phys_addr, len: (entry.len as usize).min(8), data: entry.data });
            self.first().store((first + 1) % self.capacity, Ordering::Release);
            replayed += 1;
        }
        replayed
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        if let Some(len) = self.mapping {
            // SAFETY: the page mapped in `setup`, unmapped once; nothing refers to it after drop.
            unsafe { libc::munmap(self.ring.as_ptr().cast(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in ordinary memory, with KVM's side played by `push`.
    struct FakeKvmRing {
        page: Box<[u64; 512]>,
        ring: CoalescedRing,
    }

    impl FakeKvmRing {
        fn new() -> Self {
            let mut page = Box::new([0u64; 512]);
            let ptr = NonNull::new(page.as_mut_ptr().cast::<kvm_coalesced_mmio_ring>()).unwrap();
            let ring = CoalescedRing {
                ring: ptr,
                capacity: CoalescedRing::capacity_of(4096),
                mapping: None,
                replaying: Mutex::new(()),
                corrupt: AtomicBool::new(false),
            };
            Self { page, ring }
        }

        fn push(&mut self, port: u16, data: &[u8]) {
            let last = self.ring.last().load(Ordering::Relaxed);
            let mut entry =
                kvm_coalesced_mmio { phys_addr: u64::from(port), len: data.len() as u32, ..Default::default() };
            entry.__bindgen_anon_1.pio = 1;
            entry.data[..data.len()].copy_from_slice(data);
            let base = self.page.as_mut_ptr().cast::<u8>();
            // SAFETY: test page of 4096 bytes; `last < capacity` keeps the entry inside it.
            unsafe {
                std::ptr::write(
                    base.add(size_of::<kvm_coalesced_mmio_ring>()).cast::<kvm_coalesced_mmio>().add(last as usize),
                    entry,
                )
            };
            self.ring.last().store((last + 1) % self.ring.capacity, Ordering::Release);
        }
    }

    #[test]
    fn a_page_holds_kvm_s_number_of_entries() {
        // include/uapi/linux/kvm.h: (PAGE_SIZE - sizeof(ring)) / sizeof(entry) = (4096 - 8) / 24.
        assert_eq!(CoalescedRing::capacity_of(4096), 170);
    }

    #[test]
    fn an_empty_ring_replays_nothing() {
        let fake = FakeKvmRing::new();
        assert_eq!(fake.ring.replay(|w| panic!("nothing queued, got {w:?}")), 0);
    }

    #[test]
    fn queued_writes_are_replayed_once_in_the_guest_s_order() {
        let mut fake = FakeKvmRing::new();
        fake.push(0xcf8, &0x8000_0800u32.to_le_bytes());
        fake.push(0xcfb, &[0x01]);
        fake.push(0xcf8, &0x8000_1004u32.to_le_bytes());
        let mut seen = Vec::new();
        assert_eq!(fake.ring.replay(|w| seen.push((w.pio, w.addr, w.bytes().to_vec()))), 3);
        assert_eq!(
            seen,
            vec![
                (true, 0xcf8, 0x8000_0800u32.to_le_bytes().to_vec()),
                (true, 0xcfb, vec![0x01]),
                (true, 0xcf8, 0x8000_1004u32.to_le_bytes().to_vec()),
            ]
        );
        assert_eq!(fake.ring.replay(|w| panic!("replayed twice: {w:?}")), 0);
    }

    #[test]
    fn the_ring_wraps_around() {
        let mut fake = FakeKvmRing::new();
        let mut total = 0u32;
        for round in 0..5u32 {
            for i in 0..100u32 {
                fake.push(0xcf8, &(round * 1000 + i).to_le_bytes());
            }
            let mut expected = round * 1000;
            total += fake.ring.replay(|w| {
                assert_eq!(w.bytes(), expected.to_le_bytes());
                expected += 1;
            }) as u32;
        }
        assert_eq!(total, 500);
    }

    #[test]
    fn indices_out_of_bounds_stop_the_replay_instead_of_reading_past_the_page() {
        let fake = FakeKvmRing::new();
        fake.ring.last().store(100_000, Ordering::Release);
        assert_eq!(fake.ring.replay(|w| panic!("read outside the ring: {w:?}")), 0);
        assert_eq!(fake.ring.replay(|w| panic!("read a corrupt ring again: {w:?}")), 0);
    }
}

//! COM1: a 16550 UART (vm-superio) whose interrupt is an eventfd wired to a KVM irqfd.

use std::io::{self, Write};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// An eventfd that raises the UART's interrupt line.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Signals `rx_space` when the guest drained the receive FIFO, so pending host input can
/// be pushed again.
pub struct RxSpaceEvents {
    pub rx_space: EventFd,
}

impl SerialEvents for RxSpaceEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        crate::timing::FIRST_SERIAL_BYTE.reach();
    }
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Losing this wakeup only delays input until the next read; nothing to report.
        let _ = self.rx_space.write(1);
    }
}

pub type SerialOut = Box<dyn Write + Send>;

/// The serial port as a port-I/O device.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, RxSpaceEvents, SerialOut>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, rx_space: EventFd, out: SerialOut) -> Self {
        Self { uart: Serial::with_events(EventFdTrigger(interrupt), RxSpaceEvents { rx_space }, out) }
    }

    /// Queues host input for the guest; returns how many bytes fit (0 when the FIFO is full).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                log::warn!("serial: cannot deliver input: {e:?}");
                0
            }
        }
    }
}

impl MutDevicePio for SerialDevice {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(offset, value) {
                log::debug!("serial: write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::SharedOutput as Shared;

    #[test]
    fn output_reaches_the_sink_and_input_raises_the_interrupt() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let rx = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), rx.try_clone().unwrap(), Box::new(out.clone()));
        let base = PioAddress(0x3f8);
        for b in b"hi" {
            dev.pio_write(base, 0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
        // Enable the received-data interrupt, then feed input.
        dev.pio_write(base, 1, &[0x01]);
        assert_eq!(dev.enqueue_input(b"xy"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut d = [0u8];
        dev.pio_read(base, 0, &mut d);
        assert_eq!(d[0], b'x');
        dev.pio_read(base, 0, &mut d);
        assert_eq!(d[0], b'y');
        assert_eq!(rx.read().unwrap(), 1, "drained FIFO signals rx space");
        // A full FIFO takes what fits and then nothing.
        let big = [b'a'; 100];
        let n = dev.enqueue_input(&big);
        assert!(n > 0 && n < 100);
        assert_eq!(dev.enqueue_input(&big), 0);
    }
}

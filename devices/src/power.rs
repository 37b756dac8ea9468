//! Power and reset controls the guest can reach:
//! - the hardware-reduced ACPI sleep control register (`SLP_EN` with `SLP_TYP` = S5 → off),
//! - the ACPI reset register (writing the reset value → reset),
//! - the i8042 command port (`0xfe` pulses the CPU reset line → reset).
//!
//! Each request is an eventfd the VMM's event loop waits on.

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vmm_sys_util::eventfd::EventFd;

/// Ports 0x600..0x603: sleep control, sleep status, reset.
pub const ACPI_PM_PORT: u16 = 0x600;
pub const ACPI_PM_PORT_COUNT: u16 = 3;
/// i8042 data and command/status ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;

const SLEEP_CONTROL_OFFSET: PioAddressOffset = 0;
const RESET_OFFSET: PioAddressOffset = 2;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const I8042_CMD_RESET_CPU: u8 = 0xfe;

/// Eventfds signalled on guest power-off and reset.
pub struct PowerEvents {
    pub power_off: EventFd,
    pub reset: EventFd,
}

impl PowerEvents {
    fn signal(evt: &EventFd, what: &str) {
        if let Err(e) = evt.write(1) {
            log::error!("cannot signal guest {what}: {e}");
        }
    }
}

/// The ACPI PM register block.
pub struct AcpiPmDevice {
    events: PowerEvents,
    s5_sleep_type: u8,
    reset_value: u8,
}

impl AcpiPmDevice {
    pub fn new(events: PowerEvents, s5_sleep_type: u8, reset_value: u8) -> Self {
        Self { events, s5_sleep_type, reset_value }
    }
}

impl MutDevicePio for AcpiPmDevice {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Sleep status: never woken; reset register reads as 0.
        data.fill(0);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && sleep_type == self.s5_sleep_type {
                    PowerEvents::signal(&self.events.power_off, "power-off");
                }
            }
            RESET_OFFSET if value == self.reset_value => {
                PowerEvents::signal(&self.events.reset, "reset");
            }
            _ => {}
        }
    }
}

/// Just enough of an i8042 for the kernel's keyboard-controller reboot path.
pub struct I8042Reset {
    reset: EventFd,
}

impl I8042Reset {
    pub fn new(reset: EventFd) -> Self {
        Self { reset }
    }
}

impl MutDevicePio for I8042Reset {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn pio_write(&mut self, base: PioAddress, _offset: PioAddressOffset, data: &[u8]) {
        if base.0 == I8042_COMMAND_PORT && data.first() == Some(&I8042_CMD_RESET_CPU) {
            PowerEvents::signal(&self.reset, "reset");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evts() -> (PowerEvents, EventFd, EventFd) {
        let off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let rst = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (PowerEvents { power_off: off.try_clone().unwrap(), reset: rst.try_clone().unwrap() }, off, rst)
    }

    #[test]
    fn s5_with_slp_en_powers_off_other_states_do_not() {
        let (e, off, rst) = evts();
        let mut pm = AcpiPmDevice::new(e, 5, 1);
        let base = PioAddress(ACPI_PM_PORT);
        pm.pio_write(base, 0, &[5 << 2]); // no SLP_EN
        pm.pio_write(base, 0, &[(3 << 2) | SLP_EN]); // S3
        assert!(off.read().is_err());
        pm.pio_write(base, 0, &[(5 << 2) | SLP_EN]);
        assert_eq!(off.read().unwrap(), 1);
        assert!(rst.read().is_err());
    }

    #[test]
    fn reset_register_and_i8042_reset() {
        let (e, off, rst) = evts();
        let mut pm = AcpiPmDevice::new(e, 5, 1);
        pm.pio_write(PioAddress(ACPI_PM_PORT), 2, &[7]);
        assert!(rst.read().is_err());
        pm.pio_write(PioAddress(ACPI_PM_PORT), 2, &[1]);
        assert_eq!(rst.read().unwrap(), 1);
        let mut kbd = I8042Reset::new(rst.try_clone().unwrap());
        kbd.pio_write(PioAddress(I8042_DATA_PORT), 0, &[0xfe]);
        assert!(rst.read().is_err());
        kbd.pio_write(PioAddress(I8042_COMMAND_PORT), 0, &[0xfe]);
        assert_eq!(rst.read().unwrap(), 1);
        assert!(off.read().is_err());
    }
}

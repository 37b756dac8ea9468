//! CMOS RTC on ports 0x70/0x71: reports host UTC time (BCD, 24h) and keeps 128 bytes of
//! NVRAM; time writes are ignored.

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_PORT_COUNT: u16 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate, update not in progress.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD.
const REG_B_VALUE: u8 = 0x02;
/// Register D: RAM and time valid.
const REG_D_VALUE: u8 = 0x80;

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub weekday: u8, // 1 = Sunday
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl RtcTime {
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self::from_unix(secs)
    }

    /// Civil date from days since the epoch (Howard Hinnant's algorithm).
    pub fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        Self {
            year,
            month,
            day,
            weekday: ((days + 4).rem_euclid(7) + 1) as u8, // 1970-01-01 was a Thursday
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    clock: fn() -> RtcTime,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(RtcTime::now)
    }
}

impl Cmos {
    pub fn with_clock(clock: fn() -> RtcTime) -> Self {
        Self { index: 0, nvram: [0; 128], clock }
    }

    fn read_register(&self, index: u8) -> u8 {
        let t = (self.clock)();
        match index {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd((t.year % 100) as u8),
            REG_CENTURY => bcd((t.year / 100) as u8),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            i => self.nvram[usize::from(i & 0x7f)],
        }
    }
}

impl MutDevicePio for Cmos {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let value = match offset {
            0 => self.index,
            _ => self.read_register(self.index),
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.index = value & 0x7f, // bit 7 is the NMI mask
            _ if self.index > REG_D && self.index != REG_CENTURY => {
                self.nvram[usize::from(self.index)] = value;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> RtcTime {
        // 2026-11-25 21:54:35 UTC, a Wednesday.
        RtcTime::from_unix(1_795_643_675)
    }

    #[test]
    fn civil_date_from_unix() {
        let t = fixed();
        assert_eq!((t.year, t.month, t.day), (2026, 11, 25));
        assert_eq!((t.hour, t.minute, t.second), (21, 54, 35));
        assert_eq!(t.weekday, 4);
        assert_eq!(RtcTime::from_unix(0).weekday, 5);
        let leap = RtcTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn registers_read_bcd_time_and_nvram_sticks() {
        let mut c = Cmos::with_clock(fixed);
        let base = PioAddress(CMOS_PORT);
        let read = |c: &mut Cmos, idx: u8| {
            c.pio_write(base, 0, &[idx | 0x80]);
            let mut d = [0u8];
            c.pio_read(base, 1, &mut d);
            d[0]
        };
        assert_eq!(read(&mut c, REG_YEAR), 0x26);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_MONTH), 0x11);
        assert_eq!(read(&mut c, REG_HOURS), 0x21);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "update never in progress");
        assert_eq!(read(&mut c, REG_B), REG_B_VALUE);
        c.pio_write(base, 0, &[0x40]);
        c.pio_write(base, 1, &[0xab]);
        assert_eq!(read(&mut c, 0x40), 0xab);
        c.pio_write(base, 0, &[REG_SECONDS]);
        c.pio_write(base, 1, &[0x99]);
        assert_eq!(read(&mut c, REG_SECONDS), 0x35);
    }
}

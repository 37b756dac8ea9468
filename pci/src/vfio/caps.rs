//! Walking a function's capability list.

/// Capability ids.
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_MSIX: u8 = 0x11;

const CAPABILITIES_POINTER: usize = 0x34;
const STATUS_CAPABILITIES_LIST: u32 = 1 << (16 + 4);
/// A list longer than this is corrupt (48 dword-aligned slots fit after the header).
const MAX_CAPABILITIES: usize = 48;

/// Byte offsets of every capability `(id, offset)`, from a dword reader of config space.
pub fn capabilities(read: impl Fn(usize) -> u32) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    if read(1) & STATUS_CAPABILITIES_LIST == 0 {
        return out;
    }
    let mut next = (read(CAPABILITIES_POINTER / 4) & 0xfc) as usize;
    while next >= 0x40 && out.len() < MAX_CAPABILITIES {
        if out.iter().any(|&(_, o)| o == next) {
            break; // a loop
        }
        let header = read(next / 4);
        out.push(((header & 0xff) as u8, next));
        next = ((header >> 8) & 0xfc) as usize;
    }
    out
}

pub fn find_capability(read: impl Fn(usize) -> u32, id: u8) -> Option<usize> {
    capabilities(read).into_iter().find(|&(cap, _)| cap == id).map(|(_, o)| o)
}

/// The PCI Express capability id.
pub const CAP_ID_EXP: u8 = 0x10;
/// Extended capabilities start here, in the 4 KiB configuration space of a PCIe function.
pub const EXT_CAPABILITIES_START: usize = 0x100;
const CONFIG_SPACE_END: usize = 0x1000;

/// Extended capabilities `(id, version, offset)` from a dword reader of config space (empty
/// when 0x100 holds nothing, or all ones: no extended space).
pub fn extended_capabilities(read: impl Fn(usize) -> u32) -> Vec<(u16, u8, usize)> {
    let mut out = Vec::new();
    let mut next = EXT_CAPABILITIES_START;
    while (EXT_CAPABILITIES_START..CONFIG_SPACE_END).contains(&next) && out.len() < MAX_CAPABILITIES * 4 {
        let header = read(next / 4);
        if header == 0 || header == u32::MAX || out.iter().any(|&(_, _, o)| o == next) {
            break;
        }
        out.push(((header & 0xffff) as u16, ((header >> 16) & 0xf) as u8, next));
        next = ((header >> 20) & 0xffc) as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(regs: &[(usize, u32)]) -> impl Fn(usize) -> u32 + '_ {
        move |r| regs.iter().find(|(i, _)| *i == r).map(|(_, v)| *v).unwrap_or(0)
    }

    #[test]
    fn walks_the_list() {
        let regs = [
            (1, STATUS_CAPABILITIES_LIST),
            (0x34 / 4, 0x40),
            (0x40 / 4, 0x0000_7001),
            (0x70 / 4, 0x0002_a011),
            (0xa0 / 4, 0x0000_0010),
        ];
        assert_eq!(capabilities(space(&regs)), vec![(0x01, 0x40), (0x11, 0x70), (0x10, 0xa0)]);
        assert_eq!(find_capability(space(&regs), CAP_ID_MSIX), Some(0x70));
        assert_eq!(find_capability(space(&regs), CAP_ID_MSI), None);
    }

    #[test]
    fn walks_the_extended_list_and_stops_at_the_end_or_a_loop() {
        // AER v1 at 0x100 -> ARI at 0x150 -> end (an igb VF in the testbed).
        let regs = [(0x100 / 4, 0x1501_0001), (0x150 / 4, 0x0001_000e)];
        assert_eq!(extended_capabilities(space(&regs)), vec![(0x0001, 1, 0x100), (0x000e, 1, 0x150)]);
        assert!(extended_capabilities(space(&[])).is_empty());
        assert!(extended_capabilities(space(&[(0x100 / 4, u32::MAX)])).is_empty());
        let looped = [(0x100 / 4, 0x1001_0001)];
        assert_eq!(extended_capabilities(space(&looped)).len(), 1);
    }

    #[test]
    fn no_list_and_loops_are_handled() {
        assert!(capabilities(space(&[(0x34 / 4, 0x40)])).is_empty());
        let looped =
            [(1, STATUS_CAPABILITIES_LIST), (0x34 / 4, 0x40), (0x40 / 4, 0x0000_5001), (0x50 / 4, 0x0000_4005)];
        assert_eq!(capabilities(space(&looped)).len(), 2);
        let bad = [(1, STATUS_CAPABILITIES_LIST), (0x34 / 4, 0x20)];
        assert!(capabilities(space(&bad)).is_empty(), "pointer into the header");
    }
}

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
    fn no_list_and_loops_are_handled() {
        assert!(capabilities(space(&[(0x34 / 4, 0x40)])).is_empty());
        let looped =
            [(1, STATUS_CAPABILITIES_LIST), (0x34 / 4, 0x40), (0x40 / 4, 0x0000_5001), (0x50 / 4, 0x0000_4005)];
        assert_eq!(capabilities(space(&looped)).len(), 2);
        let bad = [(1, STATUS_CAPABILITIES_LIST), (0x34 / 4, 0x20)];
        assert!(capabilities(space(&bad)).is_empty(), "pointer into the header");
    }
}

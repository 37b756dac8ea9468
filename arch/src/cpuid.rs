//! CPUID as each vCPU sees it: KVM's supported set, patched with this vCPU's APIC id, the
//! VM's topology (one socket, one thread per core, `cpu_count` cores) and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types of leaves 0xB/0x1F.
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_THREAD: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` items.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Patches `entries` in place for vCPU `cpu_id` of `cpu_count`.
pub fn patch_cpuid(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, cpu_count: u8) {
    let apic_id = u32::from(cpu_id);
    let count = u32::from(cpu_count.max(1));
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: addressable core ids in the package - 1.
                let cores = (1u32 << id_bits(count)) - 1;
                entry.eax = (entry.eax & 0x03ff_ffff) | (cores << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_TYPE_THREAD << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = id_bits(count);
                        entry.ebx = count;
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = (LEVEL_TYPE_INVALID << 8) | entry.index;
                    }
                }
            }
            LEAF_AMD_ADDRESS_SIZES => {
                // ECX[15:12]: APIC id size; ECX[7:0]: cores - 1.
                entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            LEAF_AMD_EXT_APIC_ID => {
                entry.eax = apic_id;
                entry.ebx = (entry.ebx & !0xff_ff) | apic_id; // one thread per core
                entry.ecx &= !0x7ff; // one node, node id 0
            }
            _ => {}
        }
    }
}

/// Guest physical address width reported by CPUID leaf 0x80000008, if present.
pub fn phys_address_bits(entries: &[kvm_cpuid_entry2]) -> Option<u8> {
    entries
        .iter()
        .find(|e| e.function == LEAF_AMD_ADDRESS_SIZES)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|&bits| bits >= 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax: 0xdead, ebx: 0xbeef, ecx: 0, edx: 0, ..Default::default() }
    }

    #[test]
    fn apic_id_topology_and_hypervisor_bit() {
        let mut e = vec![
            leaf(1, 0),
            leaf(4, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ];
        e[5].eax = 0x3030;
        patch_cpuid(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[2].ebx, e[2].edx, (e[2].ecx >> 8) & 0xff), (1, 3, 1));
        assert_eq!((e[3].eax, e[3].ebx, (e[3].ecx >> 8) & 0xff), (2, 4, 2));
        assert_eq!((e[4].ebx, (e[4].ecx >> 8) & 0xff, e[4].ecx & 0xff), (0, 0, 2));
        assert_eq!(e[5].ecx & 0xff, 3);
        assert_eq!((e[5].ecx >> 12) & 0xf, 2);
        assert_eq!(e[6].eax, 3);
        assert_eq!(phys_address_bits(&e), Some(0x30));
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut e = vec![leaf(1, 0)];
        e[0].edx = EDX_HTT;
        patch_cpuid(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[0].ebx >> 24, 0);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
    }
}

//! The few ELF facts emulation needs: which header bytes identify an
//! architecture, a tiny `exit(0)` program to probe 32-bit compat mode, and
//! whether an interpreter is static.

use std::io::Read;
use std::path::Path;

/// `EI_CLASS` values.
pub(crate) const CLASS32: u8 = 1;
pub(crate) const CLASS64: u8 = 2;
/// `EI_DATA` values.
pub(crate) const LSB: u8 = 1;
pub(crate) const MSB: u8 = 2;

/// `e_machine` numbers of the architectures a builder runs.
pub(crate) const EM_386: u16 = 3;
pub(crate) const EM_PPC64: u16 = 21;
pub(crate) const EM_S390: u16 = 22;
pub(crate) const EM_ARM: u16 = 40;
pub(crate) const EM_X86_64: u16 = 62;
pub(crate) const EM_AARCH64: u16 = 183;

/// How an architecture's executables start: class, byte order, machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ElfId {
    pub class: u8,
    pub data: u8,
    pub machine: u16,
}

impl ElfId {
    fn u16(self, v: u16) -> [u8; 2] {
        if self.data == MSB {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn u32(self, v: u32) -> [u8; 4] {
        if self.data == MSB {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    /// The first 20 bytes of an executable (`e_type` = `ET_EXEC`) of this
    /// architecture: what a binfmt_misc magic is matched against.
    pub fn header_prefix(self, e_type: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = self.class;
        h[5] = self.data;
        h[6] = 1; // EV_CURRENT
        h[16..18].copy_from_slice(&self.u16(e_type));
        h[18..20].copy_from_slice(&self.u16(self.machine));
        h
    }

    /// A binfmt_misc magic and mask for this architecture: the ident bytes
    /// except the OS ABI, `e_type` EXEC or DYN (the low bit is masked), the
    /// machine.
    pub fn magic_and_mask(self) -> ([u8; 20], [u8; 20]) {
        let magic = self.header_prefix(2);
        let mut mask = [0xffu8; 20];
        mask[7] = 0x00; // EI_OSABI
        let e_type_mask = self.u16(0xfffe);
        mask[16..18].copy_from_slice(&e_type_mask);
        (magic, mask)
    }

    /// A complete static executable that calls `exit(0)`, for the 32-bit
    /// architectures a 64-bit kernel may run natively (i386 on x86-64,
    /// AArch32 on arm64). `None` for others.
    pub fn exit0_program(self) -> Option<Vec<u8>> {
        let code: &[u8] = match (self.machine, self.class) {
            // mov eax, 1 ; xor ebx, ebx ; int 0x80
            (EM_386, CLASS32) => &[0xb8, 1, 0, 0, 0, 0x31, 0xdb, 0xcd, 0x80],
            // mov r0, #0 ; mov r7, #1 ; svc #0   (little-endian A32)
            (EM_ARM, CLASS32) if self.data == LSB => &[
                0x00, 0x00, 0xa0, 0xe3, 0x01, 0x70, 0xa0, 0xe3, 0x00, 0x00, 0x00, 0xef,
            ],
            _ => return None,
        };
        const EHDR: u32 = 52;
        const PHDR: u32 = 32;
        const BASE: u32 = 0x0001_0000;
        let entry = BASE + EHDR + PHDR;
        let total = EHDR + PHDR + code.len() as u32;
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&self.header_prefix(2)[..16]);
        out.extend_from_slice(&self.u16(2)); // e_type EXEC
        out.extend_from_slice(&self.u16(self.machine));
        out.extend_from_slice(&self.u32(1)); // e_version
        out.extend_from_slice(&self.u32(entry));
        out.extend_from_slice(&self.u32(EHDR)); // e_phoff
        out.extend_from_slice(&self.u32(0)); // e_shoff
        let flags = if self.machine == EM_ARM {
            0x0500_0000
        } else {
            0
        }; // EABI5
        out.extend_from_slice(&self.u32(flags));
        out.extend_from_slice(&self.u16(EHDR as u16));
        out.extend_from_slice(&self.u16(PHDR as u16));
        out.extend_from_slice(&self.u16(1)); // e_phnum
        out.extend_from_slice(&self.u16(40)); // e_shentsize
        out.extend_from_slice(&self.u16(0)); // e_shnum
        out.extend_from_slice(&self.u16(0)); // e_shstrndx
                                             // PT_LOAD of the whole file, read + execute.
        out.extend_from_slice(&self.u32(1));
        out.extend_from_slice(&self.u32(0)); // p_offset
        out.extend_from_slice(&self.u32(BASE)); // p_vaddr
        out.extend_from_slice(&self.u32(BASE)); // p_paddr
        out.extend_from_slice(&self.u32(total)); // p_filesz
        out.extend_from_slice(&self.u32(total)); // p_memsz
        out.extend_from_slice(&self.u32(5)); // PF_R | PF_X
        out.extend_from_slice(&self.u32(0x1000)); // p_align
        out.extend_from_slice(code);
        Some(out)
    }
}

/// Whether the ELF file at `path` has no `PT_INTERP` (a static program
/// keeps working when the kernel opens it once and runs it inside another
/// root filesystem). `false` when it cannot be read or is not ELF.
pub(crate) fn is_static(path: &Path) -> bool {
    let mut buf = Vec::new();
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // Program headers sit near the start; 64 KiB covers every real layout.
    if f.take(64 * 1024).read_to_end(&mut buf).is_err() || buf.len() < 52 {
        return false;
    }
    if &buf[..4] != b"\x7fELF" {
        return false;
    }
    let be = buf[5] == MSB;
    let rd = |off: usize, len: usize| -> Option<u64> {
        let b = buf.get(off..off + len)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if be { b[i] } else { b[len - 1 - i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if buf[4] == CLASS64 {
        (rd(32, 8), rd(54, 2), rd(56, 2))
    } else {
        (rd(28, 4), rd(42, 2), rd(44, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match rd(off, 4) {
            Some(3) => return false, // PT_INTERP
            Some(_) => {}
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_matches_own_header_for_exec_and_dyn() {
        for id in [
            ElfId {
                class: CLASS64,
                data: LSB,
                machine: EM_AARCH64,
            },
            ElfId {
                class: CLASS64,
                data: MSB,
                machine: EM_S390,
            },
            ElfId {
                class: CLASS32,
                data: LSB,
                machine: EM_ARM,
            },
        ] {
            let (magic, mask) = id.magic_and_mask();
            for e_type in [2, 3] {
                let h = id.header_prefix(e_type);
                assert!(h.iter().zip(mask).zip(magic).all(|((b, m), g)| b & m == g));
            }
            let h = id.header_prefix(1); // ET_REL is not run
            assert!(!h.iter().zip(mask).zip(magic).all(|((b, m), g)| b & m == g));
        }
    }

    #[test]
    fn exit_program_is_well_formed() {
        let id = ElfId {
            class: CLASS32,
            data: LSB,
            machine: EM_386,
        };
        let p = id.exit0_program().unwrap();
        assert_eq!(&p[..4], b"\x7fELF");
        assert_eq!(p.len(), 52 + 32 + 9);
        assert!(ElfId {
            class: CLASS64,
            data: LSB,
            machine: EM_X86_64
        }
        .exit0_program()
        .is_none());
    }
}

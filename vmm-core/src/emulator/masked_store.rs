//! The byte-masked stores MASKMOVQ (MMX) and MASKMOVDQU (SSE2): each byte
//! of the data register whose mask byte has its top bit set is written to
//! DS:rDI plus its index (a segment prefix may replace DS; the address
//! size picks DI, EDI or RDI). The whole destination is checked first,
//! so a fault leaves memory unchanged; then only the selected bytes are
//! written, one access each, as a device behind them sees them. MASKMOVQ
//! enters MMX state as every MMX instruction does.

use super::access::Context;
use super::cpu::{CpuState, GuestBus};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use super::mmx::mmx_of;
use super::operand::{address_mask, xmm_of};
use crate::paging::{AccessKind, CR0_EM, CR0_TS, CR4_OSFXSR};
use iced_x86::Mnemonic;

/// RDI.
const RDI: usize = 7;

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// MASKMOVQ or MASKMOVDQU.
    pub fn masked_store(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let cr0 = self.control.cr0;
        // Operand 0 is the implicit DS:rDI destination, 1 the data
        // register, 2 the mask.
        let i = &d.instr;
        let mut mmx_state = None;
        let (data, mask, len): ([u8; 16], [u8; 16], usize) = if i.mnemonic() == Mnemonic::Maskmovq {
            let (Some(a), Some(b)) = (mmx_of(i.op1_register()), mmx_of(i.op2_register())) else {
                return Err(self.unsupported(d));
            };
            // The MMX checks and state change come from the MMX moves.
            let x = self.enter_mmx_checked(d)?;
            let mut data = [0u8; 16];
            let mut mask = [0u8; 16];
            data[..8].copy_from_slice(&x.st[a][..8]);
            mask[..8].copy_from_slice(&x.st[b][..8]);
            mmx_state = Some(x);
            (data, mask, 8)
        } else {
            if cr0 & CR0_EM != 0 || self.control.cr4 & CR4_OSFXSR == 0 {
                return Err(Exception::InvalidOpcode.into());
            }
            if cr0 & CR0_TS != 0 {
                return Err(Exception::DeviceNotAvailable.into());
            }
            let (Some(a), Some(b)) = (xmm_of(i.op1_register()), xmm_of(i.op2_register())) else {
                return Err(self.unsupported(d));
            };
            (
                self.state.xmm(a).to_le_bytes(),
                self.state.xmm(b).to_le_bytes(),
                16,
            )
        };
        let seg = self.memory_segment(d);
        let base = self.state.gpr(RDI) & address_mask(d.address_size);
        // Every byte of the destination is checked before any is written.
        self.prepare(seg, base, len, AccessKind::Write)?;
        for (n, (byte, m)) in data.iter().zip(mask.iter()).take(len).enumerate() {
            if m & 0x80 != 0 {
                let offset = base.wrapping_add(n as u64) & address_mask(d.address_size);
                let range = self.prepare(seg, offset, 1, AccessKind::Write)?;
                self.bus_write(&range, &[*byte])?;
            }
        }
        if let Some(x) = mmx_state {
            self.state.set_x87(&x);
        }
        Ok(())
    }
}

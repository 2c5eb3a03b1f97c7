//! The VGA register file: miscellaneous output, sequencer, graphics
//! controller, attribute controller, CRT controller and DAC, with the index
//! and flip-flop state the guest drives them through. Every index the guest
//! writes is masked or bounds-checked here; nothing panics.

/// Sequencer registers (index port 0x3c4).
pub const SEQ_COUNT: usize = 8;
/// Graphics controller registers (index port 0x3ce).
pub const GR_COUNT: usize = 9;
/// Attribute controller registers (port 0x3c0).
pub const AR_COUNT: usize = 0x15;
/// CRT controller registers (index port 0x3d4/0x3b4).
pub const CRTC_COUNT: usize = 0x19;
/// DAC entries (256 colours of 3 components).
pub const DAC_BYTES: usize = 256 * 3;

/// The whole register state a renderer needs.
#[derive(Clone, Debug)]
pub struct Registers {
    /// Miscellaneous output (0x3c2 write, 0x3cc read). Bit 0 picks the
    /// colour (0x3dx) or monochrome (0x3bx) CRTC ports.
    pub misc: u8,
    /// Sequencer index.
    pub seq_index: u8,
    /// Sequencer registers.
    pub seq: [u8; SEQ_COUNT],
    /// Graphics controller index.
    pub gr_index: u8,
    /// Graphics controller registers.
    pub gr: [u8; GR_COUNT],
    /// Attribute controller index (bit 5 is palette address source).
    pub ar_index: u8,
    /// The attribute flip-flop: `true` when the next 0x3c0 write is data.
    pub ar_data_next: bool,
    /// Attribute controller registers.
    pub ar: [u8; AR_COUNT],
    /// CRTC index.
    pub crtc_index: u8,
    /// CRTC registers.
    pub crtc: [u8; CRTC_COUNT],
    /// DAC palette, 6 bits a component (8 with VBE's 8-bit DAC flag).
    pub dac: [u8; DAC_BYTES],
    /// DAC entry the next data read comes from.
    pub dac_read_index: u8,
    /// DAC entry the next data write goes to.
    pub dac_write_index: u8,
    /// Component (0..3) within the current DAC entry.
    pub dac_component: u8,
    /// Last index port written was the read index (0x3c7 reads 3), else 0.
    pub dac_reading: bool,
    /// Components gathered for the entry being written.
    pub dac_latch: [u8; 3],
    /// PEL mask (0x3c6).
    pub pel_mask: u8,
    /// Feature control (0x3da write, 0x3ca read).
    pub feature: u8,
    /// Toggled on each input status 1 read, so polling for retrace ends.
    pub retrace: bool,
}

impl Default for Registers {
    fn default() -> Self {
        Self {
            misc: 0,
            seq_index: 0,
            seq: [0; SEQ_COUNT],
            gr_index: 0,
            gr: [0; GR_COUNT],
            ar_index: 0,
            ar_data_next: false,
            ar: [0; AR_COUNT],
            crtc_index: 0,
            crtc: [0; CRTC_COUNT],
            dac: [0; DAC_BYTES],
            dac_read_index: 0,
            dac_write_index: 0,
            dac_component: 0,
            dac_reading: false,
            dac_latch: [0; 3],
            pel_mask: 0xff,
            feature: 0,
            retrace: false,
        }
    }
}

impl Registers {
    /// True when the CRTC answers at 0x3d4/0x3d5 (colour), false at 0x3b4.
    pub fn colour_ports(&self) -> bool {
        self.misc & 1 != 0
    }

    /// Read a register port (0x3b0..=0x3df). Ports the current misc
    /// setting does not decode read 0xff.
    pub fn read(&mut self, port: u16) -> u8 {
        let colour = self.colour_ports();
        match port {
            0x3c0 => self.ar_index,
            0x3c1 => self
                .ar
                .get(usize::from(self.ar_index & 0x1f))
                .copied()
                .unwrap_or(0),
            0x3c2 => 0x10, // input status 0: switch sense set (a colour monitor)
            0x3c4 => self.seq_index,
            0x3c5 => self
                .seq
                .get(usize::from(self.seq_index))
                .copied()
                .unwrap_or(0),
            0x3c6 => self.pel_mask,
            0x3c7 => {
                if self.dac_reading {
                    3
                } else {
                    0
                }
            }
            0x3c8 => self.dac_write_index,
            0x3c9 => {
                let at = usize::from(self.dac_read_index) * 3 + usize::from(self.dac_component);
                let v = self.dac.get(at).copied().unwrap_or(0);
                self.dac_component += 1;
                if self.dac_component >= 3 {
                    self.dac_component = 0;
                    self.dac_read_index = self.dac_read_index.wrapping_add(1);
                }
                v
            }
            0x3ca => self.feature,
            0x3cc => self.misc,
            0x3ce => self.gr_index,
            0x3cf => self
                .gr
                .get(usize::from(self.gr_index))
                .copied()
                .unwrap_or(0),
            0x3b4 | 0x3d4 if (port == 0x3d4) == colour => self.crtc_index,
            0x3b5 | 0x3d5 if (port == 0x3d5) == colour => self
                .crtc
                .get(usize::from(self.crtc_index))
                .copied()
                .unwrap_or(0),
            0x3ba | 0x3da if (port == 0x3da) == colour => {
                // Input status 1: resets the attribute flip-flop; the
                // display-enable and vertical-retrace bits toggle so a
                // guest waiting for either sees it.
                self.ar_data_next = false;
                self.retrace = !self.retrace;
                if self.retrace {
                    0x09
                } else {
                    0x00
                }
            }
            _ => 0xff,
        }
    }

    /// Write a register port (0x3b0..=0x3df).
    pub fn write(&mut self, port: u16, v: u8) {
        let colour = self.colour_ports();
        match port {
            0x3c0 => {
                if self.ar_data_next {
                    let i = usize::from(self.ar_index & 0x1f);
                    if let Some(r) = self.ar.get_mut(i) {
                        *r = v;
                    }
                } else {
                    self.ar_index = v & 0x3f;
                }
                self.ar_data_next = !self.ar_data_next;
            }
            0x3c2 => self.misc = v,
            0x3c4 => self.seq_index = v & 0x07,
            0x3c5 => {
                if let Some(r) = self.seq.get_mut(usize::from(self.seq_index)) {
                    *r = v;
                }
            }
            0x3c6 => self.pel_mask = v,
            0x3c7 => {
                self.dac_read_index = v;
                self.dac_component = 0;
                self.dac_reading = true;
            }
            0x3c8 => {
                self.dac_write_index = v;
                self.dac_component = 0;
                self.dac_reading = false;
            }
            0x3c9 => {
                let c = usize::from(self.dac_component.min(2));
                self.dac_latch[c] = v;
                self.dac_component += 1;
                if self.dac_component >= 3 {
                    let at = usize::from(self.dac_write_index) * 3;
                    if let Some(e) = self.dac.get_mut(at..at + 3) {
                        e.copy_from_slice(&self.dac_latch);
                    }
                    self.dac_component = 0;
                    self.dac_write_index = self.dac_write_index.wrapping_add(1);
                }
            }
            0x3ce => self.gr_index = v & 0x0f,
            0x3cf => {
                if let Some(r) = self.gr.get_mut(usize::from(self.gr_index)) {
                    *r = v;
                }
            }
            0x3b4 | 0x3d4 if (port == 0x3d4) == colour => self.crtc_index = v,
            0x3b5 | 0x3d5 if (port == 0x3d5) == colour => {
                let i = usize::from(self.crtc_index);
                // CRTC 0-7 are write-protected by bit 7 of register 0x11,
                // except the line-compare overflow bit of register 7.
                let protected = self.crtc[0x11] & 0x80 != 0 && i <= 7;
                if let Some(r) = self.crtc.get_mut(i) {
                    if !protected {
                        *r = v;
                    } else if i == 7 {
                        *r = (*r & !0x10) | (v & 0x10);
                    }
                }
            }
            0x3ba | 0x3da if (port == 0x3da) == colour => self.feature = v,
            _ => {}
        }
    }

    /// True when the attribute controller is driving the screen (palette
    /// address source, bit 5 of the index). With it clear the screen is
    /// blank while a BIOS loads the palette.
    pub fn screen_enabled(&self) -> bool {
        self.ar_index & 0x20 != 0
    }

    /// Graphics mode (GR6 bit 0) rather than text.
    pub fn graphics_mode(&self) -> bool {
        self.gr[6] & 1 != 0
    }

    /// The CRTC start address, in character/word units.
    pub fn start_address(&self) -> usize {
        usize::from(self.crtc[0x0c]) << 8 | usize::from(self.crtc[0x0d])
    }

    /// Vertical display end: number of scan lines shown.
    pub fn display_lines(&self) -> usize {
        let c7 = usize::from(self.crtc[7]);
        let vde = usize::from(self.crtc[0x12]) | (c7 & 0x02) << 7 | (c7 & 0x40) << 3;
        vde + 1
    }

    /// Scan lines a character row (or a repeated graphics line) takes.
    pub fn scan_lines_per_row(&self) -> usize {
        let msl = usize::from(self.crtc[9] & 0x1f) + 1;
        if self.crtc[9] & 0x80 != 0 {
            msl * 2
        } else {
            msl
        }
    }

    /// Characters (8- or 9-dot clocks) per line shown.
    pub fn display_columns(&self) -> usize {
        usize::from(self.crtc[1]) + 1
    }

    /// The DAC colour at `index` (after the PEL mask) as 0x00RRGGBB,
    /// expanding 6-bit components unless `dac8` says they are 8 bits.
    pub fn dac_rgb(&self, index: u8, dac8: bool) -> u32 {
        let at = usize::from(index & self.pel_mask) * 3;
        let c = |i: usize| {
            let v = u32::from(self.dac.get(at + i).copied().unwrap_or(0));
            if dac8 {
                v
            } else {
                let v = v & 0x3f;
                (v << 2) | (v >> 4)
            }
        };
        (c(0) << 16) | (c(1) << 8) | c(2)
    }

    /// The DAC index a 4-bit attribute colour maps to through the
    /// attribute palette and the colour select register.
    pub fn palette_to_dac(&self, colour: u8) -> u8 {
        let p = self.ar[usize::from(colour & 0x0f)];
        let select = self.ar[0x14];
        let low = if self.ar[0x10] & 0x80 != 0 {
            (p & 0x0f) | (select & 0x03) << 4
        } else {
            p & 0x3f
        };
        low | (select & 0x0c) << 4
    }
}

//! Commands ATA disks and ATAPI drives both accept: EXECUTE DEVICE
//! DIAGNOSTIC, SET FEATURES (transfer modes, write cache on/off: off
//! flushes the image first), CHECK POWER
//! MODE and the idle/standby/sleep family.

use super::channel::Channel;
use super::drive::{Drive, TransferMode, MAX_MWDMA, MAX_PIO, MAX_UDMA};

impl Channel {
    /// Commands both kinds of drive share; `false` if `cmd` is not one.
    pub(crate) fn common_command(&mut self, cmd: u8) -> bool {
        match cmd {
            // EXECUTE DEVICE DIAGNOSTIC.
            0x90 => {
                let atapi: [Option<bool>; 2] = [
                    self.drives[0].as_ref().map(Drive::is_atapi),
                    self.drives[1].as_ref().map(Drive::is_atapi),
                ];
                for (i, a) in atapi.iter().enumerate() {
                    if let Some(a) = a {
                        self.tf[i].set_signature(*a);
                    }
                }
                for d in self.drives.iter_mut().flatten() {
                    d.power_on();
                }
                self.raise_irq();
                true
            }
            // SET FEATURES.
            0xef => {
                self.set_features();
                true
            }
            // CHECK POWER MODE: always active.
            0xe5 => {
                self.atf().count.cur = 0xff;
                self.complete();
                true
            }
            // IDLE / STANDBY (immediate or with timer), IDLE and STANDBY
            // in their old opcodes, SLEEP: nothing to spin down.
            0xe0..=0xe3 | 0x94..=0x97 | 0xe6 | 0x99 => {
                self.complete();
                true
            }
            _ => false,
        }
    }

    fn set_features(&mut self) {
        let tf = self.tf[self.active & 1];
        let Some(d) = self.drive() else { return };
        if tf.features.cur == 0x82 && !d.is_atapi() {
            // Write cache off: what it held becomes durable now, and every
            // write from here on before it completes.
            d.write_cache = false;
            self.flush();
            return;
        }
        let ok = match tf.features.cur {
            0x03 => {
                let v = tf.count.cur;
                let n = v & 0x07;
                let mode = match v >> 3 {
                    0 if n <= 1 => Some(TransferMode::Pio(0)),
                    1 if n <= MAX_PIO => Some(TransferMode::Pio(n)),
                    4 if n <= MAX_MWDMA => Some(TransferMode::MultiwordDma(n)),
                    8 if n <= MAX_UDMA => Some(TransferMode::UltraDma(n)),
                    _ => None,
                };
                match mode {
                    Some(m) => {
                        d.mode = m;
                        true
                    }
                    None => false,
                }
            }
            0x02 if !d.is_atapi() => {
                d.write_cache = true;
                true
            }
            // Read look-ahead on/off, reverting to defaults on/off.
            0xaa | 0x55 | 0xcc | 0x66 => true,
            _ => false,
        };
        if ok {
            self.complete();
        } else {
            self.abort();
        }
    }
}

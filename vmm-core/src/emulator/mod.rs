//! Instruction decoding and emulation for accesses to emulated memory.

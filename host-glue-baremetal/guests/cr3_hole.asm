; CR3 in the VGA hole (no memory, no device): see cr3_outside_ram.inc.
%define CR3_TARGET 0xa0000
%define CR3_NAME "the VGA hole"
%include "cr3_outside_ram.inc"
